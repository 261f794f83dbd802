"""kuberl's RL runtime inside pods: controller, rollout (vLLM) and trainer (torch) roles."""

__version__ = "0.1.0"
