"""`python -m kuberl_workers.rollout`: a vLLM engine that leases chunks from the controller and loads new
weights in place when the policy version moves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from kuberl_workers.config import ENV_CONTROLLER_URL, ENV_INDEX, ENV_POD_IP, ENV_WORKER_ID
from kuberl_workers.entry import start


def main() -> int:
    cfg, token = start("rollout", __doc__ or "", needs=(ENV_CONTROLLER_URL,))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s rollout %(name)s: %(message)s")
    from kuberl_workers.rollout.worker import RolloutWorker

    index = os.environ.get(ENV_INDEX, "0")
    worker = RolloutWorker(
        cfg,
        controller_url=os.environ[ENV_CONTROLLER_URL],
        token=token,
        name=os.environ.get(ENV_WORKER_ID, f"{cfg.job}-rollout-{index}"),
        host=os.environ.get(ENV_POD_IP, "127.0.0.1"),
    )
    return asyncio.run(worker.run())


if __name__ == "__main__":
    sys.exit(main())
