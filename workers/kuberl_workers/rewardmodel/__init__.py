"""A reward model served in the reward protocol (docs/protocol.md#reward-services) by vLLM's pooling runner."""
