"""The reward API (task.rewards): built-in rules, Python functions, remote reward services and sandboxed code."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kuberl_operator.api.podpolicy import ServerPodTemplate
from kuberl_operator.api.rules import ApiModel, Rule, needs, stays_inside
from kuberl_workers.catalog import BUILTIN_REWARDS

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]
SOURCES = ("builtin", "python", "http", "code")


def _one_source() -> Rule:
    message = "exactly one of builtin, python, http or code must be set"
    return Rule(
        cel=" + ".join(f"(has(self.{s}) ? 1 : 0)" for s in SOURCES) + " == 1",
        message=message,
        field="",
        check=lambda m: None if sum(getattr(m, s) is not None for s in SOURCES) == 1 else message,
    )


def _not_both(a: str, b: str) -> Rule:
    message = f"{a} and {b} exclude each other"
    return Rule(
        cel=f"!(has(self.{a}) && has(self.{b}))",
        message=message,
        field=a,
        check=lambda m: message if getattr(m, a) is not None and getattr(m, b) is not None else None,
    )


class PythonRewardSpec(ApiModel):
    """A reward function of the user's own, called as `function(prompt=, completion=, answer=, row=)` in the
    controller's reward processes; it returns a float, or a dict of named floats (its reward is the `score` key
    when present, else the sum of the values). docs/rewards.md shows how to write one.
    """

    function: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", max_length=512)
    """`module:function`, e.g. `my_rewards:brevity`; the module is imported from `path`, `configMap` or the
    controller image."""
    path: str | None = Field(None, min_length=1, max_length=4096)
    """A directory (put on the import path) or a `.py` file (its directory put on the import path). With `volume`,
    relative to the volume's root; without, a path inside the controller image, or on this machine for
    `kuberl run` (relative to where it runs)."""
    volume: ObjectName | None = None
    """PersistentVolumeClaim holding `path`, mounted read-only into the controller pod."""
    configMap: ObjectName | None = None
    """ConfigMap whose keys are the module's files (`kubectl create configmap my-rewards
    --from-file=my_rewards.py`), mounted read-only into the controller pod and put on the import path."""

    timeoutSeconds: float = Field(10.0, gt=0, le=3600)
    """Deadline of one call (the import included on the first call of each reward process); a call past it scores 0
    and its process is replaced."""

    rules = (
        _not_both("configMap", "path"),
        _not_both("configMap", "volume"),
        needs("volume", "path"),
        stays_inside("path"),
    )


class SecretKeySelector(ApiModel):
    """One key of a Secret in the job's namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key within the Secret."""


def _url_or_server() -> Rule:
    message = "exactly one of url or serverPath must be set"
    return Rule(
        cel="has(self.url) != has(self.serverPath)",
        message=message,
        field="",
        check=lambda m: None if (m.url is None) != (m.serverPath is None) else message,
    )


class HttpRewardSpec(ApiModel):
    """A remote reward service (a reward model, an LLM judge, a verifier): the controller POSTs batches of
    completions as JSON and reads one reward per item; the protocol is in docs/protocol.md.
    """

    url: str | None = Field(None, pattern=r"^https?://[^\s]+$", max_length=2048)
    """Endpoint the batches are POSTed to, e.g. `http://reward-model.team.svc:8000/score`."""
    serverPath: str | None = Field(None, pattern=r"^/[^\s]*$", max_length=1024)
    """Instead of `url`: a path on the job's own reward server (spec.rewardServer), e.g. `/score`; batches go to
    its replicas in turn, and a retry goes to the next replica."""
    authSecret: SecretKeySelector | None = None
    """Secret key whose value is sent as the `authHeader` header (e.g. `Bearer ...`). For `kuberl run`, the
    value comes from the environment variable `KUBERL_REWARD_AUTH_<NAME>` (the reward's name, upper case)."""
    authHeader: str = Field("Authorization", min_length=1, max_length=256, pattern=r"^[-A-Za-z0-9]+$")
    """Header that carries the secret's value."""
    batchSize: int = Field(16, ge=1, le=4096)
    """Most items in one request; items waiting longer than 50 ms are sent in a smaller batch."""
    timeoutSeconds: float = Field(30.0, gt=0, le=3600)
    """Deadline of one request; a request past it counts as failed (and is retried)."""
    retries: int = Field(2, ge=0, le=10)
    """Further attempts after a timeout, a connection error or a 5xx/429 answer, with exponential backoff from
    0.5 s; a 4xx answer is not retried. Items still unscored then score 0, counted by reason."""

    rules = (_url_or_server(),)


class CodeRewardSpec(ApiModel):
    """Runs the completion's program with the row's tests in a sandboxed child process (docs/rewards.md says
    what the sandbox allows): 1 when the program and its tests exit cleanly, else 0.
    """

    testsField: str = Field("test", min_length=1, max_length=256)
    """Row key holding the test code run after the program (HumanEval's `test`, which defines `check`)."""
    entryPointField: str = Field("entry_point", min_length=1, max_length=256)
    """Row key naming the function under test; when the row has it, `check(<entry point>)` is called."""
    timeoutSeconds: float = Field(10.0, gt=0, le=600)
    """Wall-clock limit of one run."""
    cpuSeconds: int = Field(5, ge=1, le=600)
    """CPU-time limit (RLIMIT_CPU) of one run."""
    memoryMiB: int = Field(512, ge=64, le=65536)
    """Address-space limit (RLIMIT_AS) of one run."""
    outputKiB: int = Field(1024, ge=1, le=1048576)
    """Largest file the program may write, its captured stdout and stderr included (RLIMIT_FSIZE)."""


class RewardFunctionSpec(ApiModel):
    """One reward; a completion's reward is the weighted sum over task.rewards. Exactly one of `builtin`,
    `python`, `http` or `code`.
    """

    name: str = Field(max_length=63, pattern=r"^[a-z][a-z0-9_]{0,62}$")
    """Name of this score in metrics.jsonl, TensorBoard and Prometheus (`rewards/<name>`)."""
    weight: float = Field(1.0, ge=-1000, le=1000)
    """Multiplier of this score in the completion's reward."""
    builtin: Literal["exact_match", "numeric", "format", "math"] | None = None
    """A rule of the controller: `exact_match`, `numeric`, `format` (as task.reward), or `math`: the answer and
    the completion's final answer (its last `\\boxed{}` or number) are equal as mathematical expressions, by the
    `math-verify` library (LaTeX, fractions, percentages, sets and intervals)."""
    python: PythonRewardSpec | None = None
    """A Python function of your own."""
    http: HttpRewardSpec | None = None
    """A remote reward service."""
    code: CodeRewardSpec | None = None
    """Sandboxed execution of the completion's code against the row's tests."""

    rules = (_one_source(),)


class RewardServerSpec(ApiModel):
    """A reward service the operator runs for the job (a reward model, a verifier, an LLM judge): `replicas` pods
    from `template`, each reachable at `<job>-reward-<i>.<job>-reward.<namespace>.svc:<port>` (a headless Service),
    recreated when they fail or are deleted, as rollout pods are, and inside the job's NetworkPolicy (only the job's
    own pods reach them). `http` rewards with `serverPath` are sent there. The main container (named `reward`, else
    the first) gets `KUBERL_REWARD_PORT`: write `$(KUBERL_REWARD_PORT)` in its args. `kuberl run` runs its command
    and args as local processes, one per replica, with that variable set.
    """

    replicas: int = Field(1, ge=1, le=64)
    """Reward server pods."""
    port: int = Field(8000, ge=1024, le=65535)
    """Port the server listens on (`$(KUBERL_REWARD_PORT)`)."""
    template: ServerPodTemplate
    """Pod template of the reward server: its image, command and resources (GPUs for a reward model)."""


assert set(BUILTIN_REWARDS) == {"exact_match", "numeric", "format", "math"}, "builtin's enum and the catalog agree"
