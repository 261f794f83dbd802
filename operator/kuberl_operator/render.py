"""Render an RLJob into the workers' config contract: the one function operator and launcher share."""

from __future__ import annotations

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.api.spec import TaskSpec
from kuberl_workers.config import (
    AlgorithmConfig,
    C3POConfig,
    CheckpointConfig,
    EvalConfig,
    FaultConfig,
    ModelConfig,
    ReportingConfig,
    RewardConfig,
    ScaleConfig,
    TaskConfig,
    TrainerConfig,
    WorkerConfig,
    reward_auth_env,
)


def worker_config(
    job: RLJob,
    checkpoint_dir: str,
    model_root: str = "",
    data_root: str = "",
    shared_checkpoints: bool = True,
    eval_root: str = "",
    rewards_root: str = "",
    reward_servers: tuple[str, ...] = (),
) -> WorkerConfig:
    """The WorkerConfig of `job`. Paths on volumes are resolved against the given mount roots (in a pod, where
    the operator mounts the claims; locally, empty). `shared_checkpoints` says whether every role sees
    `checkpoint_dir` (locally yes; in a cluster only with spec.checkpoint.volume). A python reward's ConfigMap or
    volume is mounted at `<rewards_root>/<reward name>`; `reward_servers` are the base URLs of the replicas of
    spec.rewardServer (`http://host:port`), where http rewards with serverPath go.
    """
    spec = job.spec

    def under(root: str, path: str | None, volume: str | None) -> str | None:
        return f"{root.rstrip('/')}/{path}" if path and volume and root else path

    return WorkerConfig(
        job=job.metadata.name,
        namespace=job.metadata.namespace or "default",
        seed=spec.seed,
        model=ModelConfig(
            path=under(model_root, spec.model.path, spec.model.volume),
            builtin=spec.model.builtin,
            dtype=spec.model.dtype,
        ),
        task=TaskConfig(
            datasetPath=under(data_root, spec.task.dataset.path, spec.task.dataset.volume),
            datasetBuiltin=spec.task.dataset.builtin,
            datasetFormat=spec.task.dataset.format,
            promptField=spec.task.dataset.promptField,
            answerField=spec.task.dataset.answerField,
            promptFormat=spec.task.promptFormat,
            systemPrompt=spec.task.systemPrompt,
            rewards=reward_configs(spec.task, rewards_root, reward_servers),
            promptsPerStep=spec.task.promptsPerStep,
            samplesPerPrompt=spec.task.samplesPerPrompt,
            maxPromptTokens=spec.task.maxPromptTokens,
            maxNewTokens=spec.task.maxNewTokens,
            temperature=spec.task.temperature,
        ),
        algorithm=AlgorithmConfig(
            icepopEnabled=spec.algorithm.icepop.enabled,
            icepopAlpha=spec.algorithm.icepop.alpha,
            icepopBeta=spec.algorithm.icepop.beta,
            clipEpsilon=spec.algorithm.clipEpsilon,
            klCoef=spec.algorithm.klCoef,
            learningRate=spec.algorithm.learningRate,
            weightDecay=spec.algorithm.weightDecay,
            maxGradNorm=spec.algorithm.maxGradNorm,
            steps=spec.algorithm.steps,
            ppoEpochs=spec.algorithm.ppoEpochs,
            miniBatches=spec.algorithm.miniBatches,
        ),
        # unset auto-retention bounds take the workers' defaults; an unset retention is itself the setting (auto)
        c3po=C3POConfig(**{**spec.c3po.model_dump(exclude_none=True), "retention": spec.c3po.retention}),
        scale=ScaleConfig(
            trainerReplicas=spec.trainer.replicas,
            trainerStrategy=spec.trainer.strategy,
            rolloutMinReplicas=spec.rollout.minReplicas,
            rolloutMaxReplicas=spec.rollout.maxReplicas,
            targetStepSeconds=spec.rollout.targetStepSeconds,
            tensorParallelSize=spec.rollout.tensorParallelSize,
            gpuMemoryUtilization=spec.rollout.gpuMemoryUtilization,
        ),
        trainer=TrainerConfig(
            maxTokensPerMicroBatch=spec.trainer.maxTokensPerMicroBatch,
            gradientCheckpointing=spec.trainer.gradientCheckpointing,
            shardGroupSize=spec.trainer.shardGroupSize,
        ),
        fault=FaultConfig(
            leaseSeconds=spec.faultTolerance.leaseSeconds,
            heartbeatSeconds=spec.faultTolerance.heartbeatSeconds,
        ),
        reporting=ReportingConfig(
            tensorboard=spec.reporting.tensorboard,
            mlflowTrackingUri=spec.reporting.mlflow.trackingUri if spec.reporting.mlflow else None,
            mlflowExperiment=spec.reporting.mlflow.experiment if spec.reporting.mlflow else None,
            wandbProject=spec.reporting.wandb.project if spec.reporting.wandb else None,
            wandbEntity=spec.reporting.wandb.entity if spec.reporting.wandb else None,
            wandbMode=spec.reporting.wandb.mode if spec.reporting.wandb else "offline",
        ),
        eval=None
        if spec.eval is None
        else EvalConfig(
            datasetPath=under(eval_root or data_root, spec.eval.dataset.path, spec.eval.dataset.volume),
            datasetBuiltin=spec.eval.dataset.builtin,
            datasetFormat=spec.eval.dataset.format,
            promptField=spec.eval.dataset.promptField,
            answerField=spec.eval.dataset.answerField,
            everySteps=spec.eval.everySteps,
            samplesPerPrompt=spec.eval.samplesPerPrompt,
            maxPrompts=spec.eval.maxPrompts,
        ),
        checkpoint=CheckpointConfig(
            dir=checkpoint_dir,
            everySteps=spec.checkpoint.everySteps,
            keep=spec.checkpoint.keep,
            shared=shared_checkpoints,
        ),
    )


def reward_configs(
    task: TaskSpec, rewards_root: str = "", reward_servers: tuple[str, ...] = ()
) -> tuple[RewardConfig, ...]:
    """task.reward (shorthand) or task.rewards as the workers' reward configs."""
    if task.reward is not None:
        return (RewardConfig(name=task.reward, kind="builtin", builtin=task.reward),)
    out = []
    for reward in task.rewards or ():
        common = {"name": reward.name, "weight": reward.weight}
        if reward.builtin is not None:
            out.append(RewardConfig(**common, kind="builtin", builtin=reward.builtin))
        elif reward.python is not None:
            python, mount = reward.python, f"{rewards_root.rstrip('/')}/{reward.name}"
            path = python.path
            if rewards_root and python.configMap:
                path = mount
            elif rewards_root and python.volume and python.path:
                path = f"{mount}/{python.path}"
            out.append(
                RewardConfig(
                    **common, kind="python", function=python.function, path=path, timeoutSeconds=python.timeoutSeconds
                )
            )
        elif reward.http is not None:
            http = reward.http
            out.append(
                RewardConfig(
                    **common,
                    kind="http",
                    url=http.url,
                    urls=tuple(f"{base}{http.serverPath}" for base in reward_servers) if http.serverPath else (),
                    authHeader=http.authHeader,
                    authEnv=reward_auth_env(reward.name) if http.authSecret else None,
                    batchSize=http.batchSize,
                    timeoutSeconds=http.timeoutSeconds,
                    retries=http.retries,
                )
            )
        elif reward.code is not None:  # the sandbox's limits keep their API names in the contract
            out.append(RewardConfig(**common, kind="code", **reward.code.model_dump()))
    return tuple(out)
