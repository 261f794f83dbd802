"""Condition types and reasons of RLJob status: the documented vocabulary that operator, CLI and docs share."""

from typing import Final, Literal

# Condition types.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
SCALING: Final = "Scaling"
DEGRADED: Final = "Degraded"
SUSPENDED: Final = "Suspended"
COMPLETE: Final = "Complete"
FAILED: Final = "Failed"

ConditionType = Literal["Ready", "Progressing", "Scaling", "Degraded", "Suspended", "Complete", "Failed"]

CONDITION_TYPES: Final[dict[str, str]] = {
    READY: "All pods of the job are running and ready and training is under way. Its reason is the one-word "
    "summary that `kubectl get rlj` shows in the Status column.",
    PROGRESSING: "The job is starting, training or recovering; False once it is Complete, Failed or Suspended.",
    SCALING: "The rollout pool is being resized toward the demand signal (True while desired != ready).",
    DEGRADED: "The job runs below its desired shape: a role restarting, rollouts below minReplicas, nodes avoided.",
    SUSPENDED: "spec.suspend is true: pods are deleted, checkpoints and status kept.",
    COMPLETE: "The controller reported the last training step. Terminal.",
    FAILED: "The job cannot go on (invalid spec, invalid input, restart limit reached). Terminal.",
}

# Reasons.
PENDING: Final = "Pending"
RUNNING: Final = "Running"
RESTARTING: Final = "Restarting"
SUSPENDED_BY_USER: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
INVALID_SPEC: Final = "InvalidSpec"
RESTART_LIMIT_EXCEEDED: Final = "RestartLimitExceeded"
SCALING_UP: Final = "ScalingUp"
SCALING_DOWN: Final = "ScalingDown"
STABLE: Final = "Stable"
ROLLOUTS_BELOW_MINIMUM: Final = "RolloutsBelowMinimum"
NODES_AVOIDED: Final = "NodesAvoided"
HEALTHY: Final = "Healthy"
CREATE_REFUSED: Final = "CreateRefused"
INVALID_INPUT: Final = "InvalidInput"
START_DEADLINE_EXCEEDED: Final = "StartDeadlineExceeded"
# What the current step waits for, from the controller's report (Progressing, while every pod is ready): the
# message names the step and since when, so a job that stopped advancing says why at the next resync.
WAITING_FOR_ROLLOUTS: Final = "WaitingForRollouts"
NO_ROLLOUT_WORKERS: Final = "NoRolloutWorkers"
WAITING_FOR_TRAINER: Final = "WaitingForTrainer"
STEP_WAITS: Final[dict[str, str]] = {
    "rollouts": WAITING_FOR_ROLLOUTS,
    "rolloutWorkers": NO_ROLLOUT_WORKERS,
    "weights": WAITING_FOR_TRAINER,
}
# Why a pod cannot start, passed through from the kubelet (a container's waiting reason) or the scheduler (the
# PodScheduled condition): the Ready condition carries it while the job waits.
POD_START_REASONS: Final[dict[str, str]] = {
    "ImagePullBackOff": "A container image cannot be pulled (wrong name or tag, no access); the kubelet backs off.",
    "ErrImagePull": "Pulling a container image failed.",
    "InvalidImageName": "A container image name cannot be parsed.",
    "ErrImageNeverPull": "imagePullPolicy Never and the image is not on the node.",
    "CreateContainerConfigError": "A container's configuration refers to something missing (a Secret, a "
    "ConfigMap, a key in one).",
    "CreateContainerError": "The container runtime could not create a container.",
    "RunContainerError": "The container runtime could not start a container.",
    "Unschedulable": "The scheduler finds no node for a pod (resources, node selector, taints, affinity).",
}

REASONS: Final[dict[str, str]] = {
    PENDING: "Pods are being created or are not yet ready.",
    **{reason: f"Ready is False: {text} The message names the pod." for reason, text in POD_START_REASONS.items()},
    START_DEADLINE_EXCEEDED: "A pod was not running and ready within faultTolerance.startDeadlineSeconds of its "
    "creation; the message gives the pod and why it waited (e.g. ImagePullBackOff). Terminal.",
    RUNNING: "Every role is ready and steps advance.",
    WAITING_FOR_ROLLOUTS: "Progressing: the step's batch is being generated (the token budget is not yet filled); "
    "the message gives the step and since when.",
    NO_ROLLOUT_WORKERS: "Progressing: no rollout worker is connected to the controller, so the step cannot fill; "
    "the message gives the step and since when.",
    WAITING_FOR_TRAINER: "Progressing: the step's batch is closed and the controller waits for the trainer gang to "
    "publish the next policy version; the message gives the step and since when.",
    RESTARTING: "A pod, the trainer gang or the controller is being recreated after a failure.",
    SUSPENDED_BY_USER: "spec.suspend is true.",
    SUCCEEDED: "All algorithm.steps were trained.",
    INVALID_SPEC: "The spec failed validation in the operator (for example on a cluster that skipped the CRD's "
    "CEL rules); the message names the field.",
    RESTART_LIMIT_EXCEEDED: "More than faultTolerance.maxRestarts restarts.",
    INVALID_INPUT: "A worker found the job's input invalid at its start (the model directory, a dataset line with its "
    "file and line number, lengths beyond the model's context): the message quotes it. Not restarted: a restart "
    "would find the same input.",
    SCALING_UP: "The rollout pool is growing toward the demand.",
    SCALING_DOWN: "A rollout pod is being drained before removal.",
    STABLE: "The rollout pool matches the demand.",
    ROLLOUTS_BELOW_MINIMUM: "Fewer ready rollout pods than rollout.minReplicas.",
    NODES_AVOIDED: "Nodes passed faultTolerance.nodeFailureThreshold and are excluded by anti-affinity.",
    HEALTHY: "Nothing is degraded.",
    CREATE_REFUSED: "The API server refused to create a child (pod template invalid for this cluster, a missing "
    "PriorityClass, a quota, an admission policy); the message names the child and quotes the API server. The "
    "operator retries on its resync, so fixing the cause (or the spec) is enough.",
}
