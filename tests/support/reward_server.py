"""A reward service as a separate process, speaking docs/protocol.md: `python -m support.reward_server PORT LOG
[HOST]` scores each item 1 when the completion's last number equals the answer, and appends one line per request
to LOG. With REWARD_TOKEN in its environment, requests must carry `Authorization: Bearer <it>`."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

TESTS = str(Path(__file__).resolve().parents[1])


def template(log: str, *args: str, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A spec.rewardServer pod template that runs this server (port from `$(KUBERL_REWARD_PORT)`, then `args`)."""
    container = {
        "name": "reward",
        "image": "registry.example/reward:1",
        "command": ["python", "-m", "support.reward_server"],
        "args": ["$(KUBERL_REWARD_PORT)", log, *args],
        "env": [{"name": "PYTHONPATH", "value": TESTS}, *(env or [])],
    }
    return {"spec": {"containers": [container]}}


def main() -> None:
    port, log = int(sys.argv[1]), sys.argv[2]
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    token = os.environ.get("REWARD_TOKEN")

    async def score(request: web.Request) -> web.Response:
        if token and request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401, text="no token")
        items = (await request.json())["items"]
        rewards = []
        for item in items:
            numbers = re.findall(r"-?\d+", item["completion"])
            rewards.append(
                {"score": float(bool(numbers) and numbers[-1] == item["answer"]), "has_number": float(bool(numbers))}
            )
        with open(log, "a") as handle:
            handle.write(json.dumps({"items": len(items)}) + "\n")
        return web.json_response({"rewards": rewards})

    app = web.Application()
    app.router.add_post("/score", score)
    web.run_app(app, host=host, port=port, print=None)


if __name__ == "__main__":
    main()
