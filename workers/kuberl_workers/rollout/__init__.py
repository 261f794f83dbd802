"""The rollout role: a vLLM engine that generates leased chunks and loads new weights in place."""
