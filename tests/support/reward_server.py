"""A reward service as a separate process, speaking docs/protocol.md: `python -m support.reward_server PORT LOG`
scores each item 1 when the completion's last number equals the answer, and appends one line per request to LOG."""

from __future__ import annotations

import json
import re
import sys

from aiohttp import web


def main() -> None:
    port, log = int(sys.argv[1]), sys.argv[2]

    async def score(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer test-token":
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
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
