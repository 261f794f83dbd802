"""`python -m kuberl_workers.controller`: serve one job's controller on the configured port."""

from __future__ import annotations

import logging
import os

from kuberl_workers.config import ENV_POD_IP
from kuberl_workers.entry import start


def main() -> None:
    cfg, token = start("controller", __doc__ or "")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s controller %(name)s: %(message)s")
    from aiohttp import web

    from kuberl_workers.controller.http import make_app
    from kuberl_workers.controller.service import Controller
    from kuberl_workers.preflight import fail, problems

    found = problems(cfg)
    if found:  # a bad input is the job's end, not a restart: exit EXIT_INVALID_INPUT with the reasons
        fail(found)
    try:
        controller = Controller(cfg)
    except ValueError as error:  # what the preflight cannot foresee (a prompt the chat template refuses, ...)
        fail([str(error)])
    app = make_app(controller, token)
    host = os.environ.get(ENV_POD_IP, "0.0.0.0")
    web.run_app(app, host=host, port=cfg.ports.controller, access_log=None, print=None)


if __name__ == "__main__":
    main()
