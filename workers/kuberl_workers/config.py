"""The worker contract: the config every kuberl process reads, and the environment variables that locate it.

Pure (pydantic only): the operator and the local launcher render it from an RLJob through one function
(`kuberl_operator.render.worker_config`), so a pod and a local process see the same job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# --- environment variables every worker process reads ------------------------------------------------------
ENV_CONFIG: Final = "KUBERL_CONFIG"
"""Path of the rendered WorkerConfig JSON file."""
ENV_ROLE: Final = "KUBERL_ROLE"
"""`controller`, `trainer` or `rollout`."""
ENV_INDEX: Final = "KUBERL_INDEX"
"""Replica index within the role (trainer rank, rollout ordinal)."""
ENV_CONTROLLER_URL: Final = "KUBERL_CONTROLLER_URL"
"""Base URL of the controller's API, e.g. http://job-controller:8000."""
ENV_TOKEN_FILE: Final = "KUBERL_TOKEN_FILE"
"""File holding the per-job bearer token (a mounted Secret)."""
ENV_POD_IP: Final = "POD_IP"
"""The address this process listens on (downward API in a pod; 127.0.0.x locally)."""
ENV_WORKER_ID: Final = "KUBERL_WORKER_ID"
"""Stable worker name (the pod name), used for leases and heartbeats."""
ENV_TRAINER_MASTER: Final = "KUBERL_TRAINER_MASTER"
# Exit code of a worker that found the job's input invalid (a dataset line, the model directory, lengths): a
# restart cannot help, so the operator and `kuberl run` fail the job (reason InvalidInput) instead of restarting.
EXIT_INVALID_INPUT: Final = 3
# How such a worker logs each problem, so that `kuberl run` and the operator can quote them from its log.
INVALID_INPUT_MARK: Final = "invalid input: "
# The trainer's per-step statistics (posted with its weights, kept in the controller's history): metrics.jsonl and
# TensorBoard both report them.
TRAINER_STAT_FIELDS: Final = (
    "loss",
    "gradNorm",
    "klRef",
    "entropy",
    "icepopMaskedFraction",
    "clippedFraction",
    "logpDiffMean",
    "logpDiffMax",
    "microBatches",
    "updates",
)


def invalid_input_problems(lines: list[str]) -> list[str]:
    """The problems among a worker's log lines (those with INVALID_INPUT_MARK), in order."""
    return [line.split(INVALID_INPUT_MARK, 1)[1] for line in lines if INVALID_INPUT_MARK in line]


# Where a worker writes why it stopped; Kubernetes shows it as the container's termination message.
TERMINATION_LOG: Final = "/dev/termination-log"
"""Host of trainer rank 0, the torch.distributed rendezvous (a headless Service name in a cluster)."""

Role = Literal["controller", "trainer", "rollout"]
ROLES: Final = ("controller", "trainer", "rollout")


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Contract):
    path: str | None = None
    builtin: str | None = None
    dtype: str = "auto"


ENV_REWARD_PORT: Final = "KUBERL_REWARD_PORT"
"""The port a reward server (spec.rewardServer) listens on; `$(KUBERL_REWARD_PORT)` in its command or args."""
ENV_EXPORT_TOKEN: Final = "KUBERL_EXPORT_TOKEN"
"""The export pod's one-time token (`kuberl export JOB`), required on every request but /healthz."""
EXPORT_TOKEN_HEADER: Final = "X-Kuberl-Token"
"""The header carrying it (the API server's pod proxy consumes `Authorization`)."""


def reward_auth_env(name: str) -> str:
    """The controller's environment variable holding http reward `name`'s auth header value (from its Secret in
    a pod; set by hand for `kuberl run`).
    """
    return f"KUBERL_REWARD_AUTH_{name.upper()}"


class RewardConfig(_Contract):
    """One reward of task.rewards (controller/rewards): `kind` says which of the fields below apply."""

    name: str
    kind: Literal["builtin", "python", "http", "code"]
    weight: float = 1.0
    builtin: str | None = None  # builtin: the rule's name
    function: str | None = None  # python: module:function
    path: str | None = None  # python: a directory or .py file put on the import path
    url: str | None = None  # http
    urls: tuple[str, ...] = ()  # http on the job's reward server: one URL per replica, used in turn
    authHeader: str = "Authorization"  # http: the header the auth value goes in
    authEnv: str | None = None  # http: environment variable holding the auth value
    batchSize: int = Field(16, ge=1)  # http
    retries: int = Field(2, ge=0)  # http
    timeoutSeconds: float | None = Field(None, gt=0)  # python, http, code; builtin: limits.rewardTimeoutSeconds
    testsField: str = "test"  # code
    entryPointField: str = "entry_point"  # code
    cpuSeconds: int = Field(5, ge=1)  # code
    memoryMiB: int = Field(512, ge=16)  # code
    outputKiB: int = Field(1024, ge=1)  # code


class TaskConfig(_Contract):
    datasetPath: str | None = None
    datasetBuiltin: str | None = None
    datasetFormat: Literal["auto", "jsonl", "parquet"] = "auto"
    promptField: str = "prompt"
    answerField: str = "answer"
    promptFormat: Literal["auto", "chat", "raw"] = "auto"
    systemPrompt: str | None = None
    rewards: tuple[RewardConfig, ...] = Field(min_length=1)
    promptsPerStep: int
    samplesPerPrompt: int
    maxPromptTokens: int
    maxNewTokens: int
    temperature: float

    @model_validator(mode="before")
    @classmethod
    def _reward_shorthand(cls, data: Any) -> Any:
        """`reward: "numeric"` (task.reward's shorthand) means one built-in reward of that name."""
        if isinstance(data, dict) and "reward" in data:
            data = dict(data)
            name = data.pop("reward")
            data.setdefault("rewards", ({"name": name, "kind": "builtin", "builtin": name},))
        return data


class AlgorithmConfig(_Contract):
    icepopEnabled: bool
    icepopAlpha: float
    icepopBeta: float
    clipEpsilon: float
    klCoef: float
    learningRate: float
    weightDecay: float
    maxGradNorm: float
    steps: int
    ppoEpochs: int = 1
    miniBatches: int = 1


class C3POConfig(_Contract):
    tokenBudget: int
    retention: int | None  # None: automatic (controller/retention.py)
    inferencePoolCapacity: int
    chunkTokens: int
    maxPurgedTokenShare: float = 0.05
    maxRetention: int = 8


class ScaleConfig(_Contract):
    trainerReplicas: int
    trainerStrategy: str = "ddp"
    rolloutMinReplicas: int
    rolloutMaxReplicas: int
    targetStepSeconds: float
    tensorParallelSize: int = 1
    gpuMemoryUtilization: float = 0.9


class TrainerConfig(_Contract):
    maxTokensPerMicroBatch: int = Field(8192, ge=1)
    """Padded tokens (rows x longest row) per forward/backward; a longer sequence gets a micro-batch alone."""
    gradientCheckpointing: bool = False
    shardGroupSize: int | None = Field(None, ge=1)
    """fsdp2: ranks sharding one copy of the model (hybrid sharding); None: the whole gang."""


class FaultConfig(_Contract):
    leaseSeconds: float
    heartbeatSeconds: float
    # Heartbeats a worker may miss before it is declared dead and its leases return to the queue.
    missedHeartbeats: int = 3


class CheckpointConfig(_Contract):
    dir: str
    everySteps: int
    keep: int
    # True when every role sees `dir` (a shared volume, or one machine): weights are published as files there.
    # False: the trainer's rank 0 serves them over HTTP and rollout workers download them.
    shared: bool = True


EVAL_LOG: Final = "eval.jsonl"
"""One JSON line per held-out evaluation round, in the checkpoint directory (controller/evaluation.py)."""


class EvalConfig(_Contract):
    """Held-out evaluation (spec.eval): the dataset's first `maxPrompts` usable prompts, `samplesPerPrompt`
    completions each, at every `everySteps`-th policy version (0 included) and the last.
    """

    datasetPath: str | None = None
    datasetBuiltin: str | None = None
    datasetFormat: Literal["auto", "jsonl", "parquet"] = "auto"
    promptField: str = "prompt"
    answerField: str = "answer"
    everySteps: int
    samplesPerPrompt: int
    maxPrompts: int


class ReportingConfig(_Contract):
    # TensorBoard event files of each step's statistics, written by the controller to <checkpoint dir>/tensorboard
    tensorboard: bool = False
    # MLflow (controller/tracking.py): a tracking URI turns it on
    mlflowTrackingUri: str | None = None
    mlflowExperiment: str | None = None
    # Weights & Biases: a project turns it on; offline runs are written under <checkpoint dir>/wandb
    wandbProject: str | None = None
    wandbEntity: str | None = None
    wandbMode: Literal["offline", "online"] = "offline"


class Ports(_Contract):
    controller: int = 8000
    rollout: int = 8001
    trainer: int = 8002
    rendezvous: int = 29500


class Limits(_Contract):
    maxRequestBytes: int = Field(64 * 1024 * 1024, ge=1024)
    rewardTimeoutSeconds: float = Field(5.0, gt=0)
    rewardProcesses: int = Field(2, ge=1)
    rolloutBatch: int = Field(256, ge=1)
    """Most chunks a rollout worker leases (and generates) at once."""


class WorkerConfig(_Contract):
    """Everything a controller, trainer or rollout process needs to know about its job."""

    job: str
    namespace: str = "default"
    seed: int = 0
    model: ModelConfig
    task: TaskConfig
    algorithm: AlgorithmConfig
    c3po: C3POConfig
    scale: ScaleConfig
    trainer: TrainerConfig = TrainerConfig()
    reporting: ReportingConfig = ReportingConfig()
    eval: EvalConfig | None = None
    fault: FaultConfig
    checkpoint: CheckpointConfig
    ports: Ports = Ports()
    limits: Limits = Limits()


def load_config(path: str | os.PathLike[str] | None = None) -> WorkerConfig:
    """Read the WorkerConfig named by the argument or by $KUBERL_CONFIG."""
    source = path or os.environ.get(ENV_CONFIG)
    if not source:
        raise RuntimeError(f"no worker config: set {ENV_CONFIG} to the rendered config file")
    return WorkerConfig.model_validate_json(Path(source).read_text(encoding="utf-8"))


def read_token(path: str | os.PathLike[str] | None = None) -> str:
    """The per-job bearer token from the file named by the argument or by $KUBERL_TOKEN_FILE."""
    source = path or os.environ.get(ENV_TOKEN_FILE)
    if not source:
        raise RuntimeError(f"no job token: set {ENV_TOKEN_FILE} to the token file")
    token = Path(source).read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise RuntimeError(f"job token in {source} is shorter than 16 characters")
    return token
