"""Names the workers implement and the RLJob API may refer to: reward functions, built-in models and datasets.

Pure constants: the operator imports this module to validate specs, so it must never import torch or vllm.
"""

from typing import Final

# Rule-based reward functions of the controller's reward registry (task.reward, or `builtin` in task.rewards).
BUILTIN_REWARDS: Final = ("exact_match", "numeric", "format", "math")
REWARD_NAMES: Final = BUILTIN_REWARDS
# Kinds of reward in task.rewards (each a module of kuberl_workers.controller.rewards).
REWARD_KINDS: Final = ("builtin", "python", "http", "code")
# Models the workers can build locally, without a download.
BUILTIN_MODELS: Final = ("tiny", "smollm2-135m-instruct")
# Each built-in model's context (max_position_embeddings): prompt plus generated tokens must fit in it.
BUILTIN_CONTEXT: Final = {"tiny": 512, "smollm2-135m-instruct": 8192}
# Built-in models whose tokenizer has no chat template (only `promptFormat: raw` or `auto` can use them).
BUILTIN_MODELS_WITHOUT_CHAT: Final = ("tiny",)
# Tasks the workers can generate locally, without a download.
BUILTIN_DATASETS: Final = ("arithmetic", "humaneval")
# Rollout engines the rollout worker can run.
ENGINES: Final = ("vllm",)
