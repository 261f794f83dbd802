"""The trainer role: GRPO with IcePop on torch.distributed ranks that restart as a gang."""
