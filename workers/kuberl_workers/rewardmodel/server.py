"""The reward model server: rendering items as conversations, scoring them with vLLM, the HTTP endpoint."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


def conversation(item: dict[str, Any], max_chars: int) -> list[dict[str, str]]:
    """An item of the reward protocol as chat messages: its prompt (a string as one user turn, or messages as
    they are), then the completion as the assistant's turn. ValueError for an item without them.
    """
    prompt, completion = item.get("prompt"), item.get("completion")
    if not isinstance(completion, str):
        raise ValueError("item has no completion string")
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    else:
        raise ValueError("item has no prompt (a string or a list of {role, content})")
    return [*messages, {"role": "assistant", "content": completion[:max_chars]}]


class RewardModel:
    """A vLLM pooling engine over a one-label sequence classifier: texts -> raw logits."""

    def __init__(self, model: str, max_model_len: int, dtype: str) -> None:
        from vllm import LLM

        checked_by_vllm: Any = dtype  # one of vLLM's dtype names, given on the command line
        self.llm = LLM(
            model=model,
            runner="pooling",
            max_model_len=max_model_len,
            dtype=checked_by_vllm,
            enforce_eager=True,
            seed=0,
        )
        self.tokenizer: Any = self.llm.get_tokenizer()  # a transformers tokenizer (vLLM's protocol is narrower)
        self.max_model_len = max_model_len

    def render(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return "\n".join(m["content"] for m in messages)

    def scores(self, texts: list[str]) -> list[float]:
        from vllm import PoolingParams, TokensPrompt

        # keep the end of a text that is too long: the completion is what is judged
        prompts = [
            TokensPrompt(prompt_token_ids=self.tokenizer.encode(text)[-(self.max_model_len - 1) :]) for text in texts
        ]
        outputs = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [float(o.outputs.probs[0]) for o in outputs]


def make_app(model: RewardModel, max_chars: int) -> web.Application:
    lock = asyncio.Lock()  # one engine call at a time; requests queue here

    async def score(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            items = body["items"]
            texts = [model.render(conversation(item, max_chars)) for item in items]
        except (ValueError, KeyError, TypeError) as error:
            return web.json_response({"error": f"bad request: {error}"}, status=400)
        async with lock:
            values = await asyncio.get_running_loop().run_in_executor(None, model.scores, texts)
        return web.json_response({"rewards": [v if math.isfinite(v) else None for v in values]})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/score", score)
    app.router.add_get("/healthz", healthz)
    return app


def serve(model_dir: str, host: str, port: int, max_model_len: int, dtype: str, max_chars: int) -> None:
    model = RewardModel(model_dir, max_model_len, dtype)
    log.info("reward model %s ready on %s:%d", model_dir, host, port)
    web.run_app(make_app(model, max_chars), host=host, port=port, print=None)
