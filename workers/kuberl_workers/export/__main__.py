"""`python -m kuberl_workers.export --root DIR --port N`: the export pod `kuberl export JOB` creates.

It serves the published policy versions under DIR (the job's checkpoint volume, mounted read-only) to the CLI,
through the API server's pod proxy; see kuberl_workers/export/server.py for the endpoints. The token comes from the
environment variable KUBERL_EXPORT_TOKEN (never on the command line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kuberl_workers.config import ENV_EXPORT_TOKEN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kuberl_workers.export", description=__doc__)
    parser.add_argument("--root", required=True, type=Path, help="the checkpoint directory (weights-<version>/)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (the pod's IP)")
    parser.add_argument("--idle-seconds", type=float, default=600.0, help="exit after this long without a request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s export: %(message)s")
    token = os.environ.get(ENV_EXPORT_TOKEN, "")
    if not token:
        sys.exit(f"export: {ENV_EXPORT_TOKEN} is not set")
    if not args.root.is_dir():
        sys.exit(f"export: --root {args.root} is not a directory (is the checkpoint claim mounted?)")
    from kuberl_workers.export.server import serve

    serve(args.root, args.host, args.port, token, args.idle_seconds)


if __name__ == "__main__":
    main()
