"""`python -m kuberl_workers.controller`: serve one job's controller on the configured port."""

from __future__ import annotations

import logging
import os

from kuberl_workers.config import ENV_POD_IP, load_config, read_token


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s controller %(name)s: %(message)s")
    from aiohttp import web

    from kuberl_workers.controller.http import make_app
    from kuberl_workers.controller.service import Controller

    cfg = load_config()
    app = make_app(Controller(cfg), read_token())
    host = os.environ.get(ENV_POD_IP, "0.0.0.0")
    web.run_app(app, host=host, port=cfg.ports.controller, access_log=None, print=None)


if __name__ == "__main__":
    main()
