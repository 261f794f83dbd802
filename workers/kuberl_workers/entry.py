"""Each role's command line: `--help` that states the environment contract, and start-up errors as one line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from pydantic import ValidationError

from kuberl_workers.config import (
    ENV_CONFIG,
    ENV_CONTROLLER_URL,
    ENV_INDEX,
    ENV_POD_IP,
    ENV_TOKEN_FILE,
    ENV_TRAINER_MASTER,
    ENV_WORKER_ID,
    WorkerConfig,
    load_config,
    read_token,
)

# Exit code of a process started without a usable config, token or environment (argparse's usage code).
EXIT_USAGE = 2

ENVIRONMENT: dict[str, str] = {
    ENV_CONFIG: "the rendered worker config (JSON); --config overrides it",
    ENV_TOKEN_FILE: "file holding the job's bearer token (>= 16 characters)",
    ENV_CONTROLLER_URL: "the controller's base URL (trainer and rollout)",
    ENV_INDEX: "replica index: trainer rank, rollout ordinal (default 0)",
    ENV_WORKER_ID: "stable worker name for leases and heartbeats (default <job>-<role>-<index>)",
    ENV_POD_IP: "address to listen on (default 127.0.0.1; the controller 0.0.0.0)",
    ENV_TRAINER_MASTER: "rank 0's address for torch.distributed (trainer, when the gang has > 1 rank)",
}


def die(role: str, message: str) -> NoReturn:
    """One line on stderr, exit EXIT_USAGE: a missing or unreadable start-up input is not a traceback."""
    print(f"kuberl_workers.{role}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def start(role: str, description: str, needs: tuple[str, ...] = (), token: bool = True) -> tuple[WorkerConfig, str]:
    """Parse the command line (answering --help), then read the config and the token.

    Returns (config, token; "" when `token` is False). Exits EXIT_USAGE with one line naming the file or variable
    at fault when the config is missing, unreadable or invalid, the token is missing, or a variable in `needs` is
    unset.
    """
    lines = "\n".join(f"  {name:<24} {text}" for name, text in ENVIRONMENT.items())
    parser = argparse.ArgumentParser(
        prog=f"python -m kuberl_workers.{role}",
        description=description,
        epilog=f"environment (set by the operator in a pod, by `kuberl run` locally):\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help=f"the worker config (default: ${ENV_CONFIG})")
    args = parser.parse_args()
    source = args.config or os.environ.get(ENV_CONFIG)
    if not source:
        die(role, f"no worker config: pass --config FILE or set {ENV_CONFIG} (see --help)")
    try:
        cfg = load_config(source)
    except OSError as error:
        die(role, f"cannot read the worker config {source}: {error.strerror or error}")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        die(role, f"{source}: invalid worker config at {where or '(top)'}: {first['msg']}")
    missing = [name for name in needs if not os.environ.get(name)]
    if missing:
        die(role, f"environment variable {missing[0]} is not set (see --help)")
    if not token:
        return cfg, ""
    try:
        return cfg, read_token()
    except (OSError, RuntimeError) as error:
        die(role, str(error))
