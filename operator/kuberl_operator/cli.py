"""The `kuberl` command line: crd, validate, explain, run, template, export, operator, release-finalizers."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

# An RLJob name (DNS-1123 label): `kuberl export` reads SOURCE as one when it is no local path.
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _crd(args: argparse.Namespace) -> int:
    from kuberl_operator.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _files(args: argparse.Namespace) -> list[str]:
    """The job files of a command: positional and `-f/--filename` (kubectl's spelling); `-` is standard input."""
    names = [*(getattr(args, "files", None) or []), *(args.filename or [])]
    if not names:
        raise SystemExit(f"kuberl {args.command}: no job file (give FILE, -f FILE, or - for standard input)")
    return names


def _validate(args: argparse.Namespace) -> int:
    from kuberl_operator.api.validate import validate_file

    failed = False
    for name in _files(args):
        problems: list[object] = list(validate_file(Path(name), args.set or ()))
        if not problems and args.local:
            problems = list(_preflight(Path(name), args.set or ()))
        for problem in problems:
            print(f"{name}: {problem}", file=sys.stderr)
        if problems:
            failed = True
        elif not args.quiet:
            print(f"{name}: valid")
    return 1 if failed else 0


def _preflight(path: Path, overrides: Sequence[str]) -> list[str]:
    """The workers' own check of the job's files as `kuberl run` would see them (kuberl_workers.preflight)."""
    import json
    import subprocess
    import tempfile

    from kuberl_operator.api.validate import load_rljob
    from kuberl_operator.render import worker_config
    from kuberl_workers.config import invalid_input_problems

    job = load_rljob(path, overrides)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.json"
        config.write_text(worker_config(job, str(Path(folder) / "checkpoints")).model_dump_json())
        done = subprocess.run(
            [sys.executable, "-m", "kuberl_workers.preflight", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode == 0:
        return []
    return invalid_input_problems(done.stderr.splitlines()) or [f"preflight failed: {json.dumps(done.stderr[-1000:])}"]


def _explain(args: argparse.Namespace) -> int:
    from kuberl_operator.api.explain import api_markdown, explain

    if args.markdown:
        sys.stdout.write(api_markdown())
        return 0
    try:
        sys.stdout.write(explain(args.field or "", recursive=args.recursive))
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from kuberl_operator.api.validate import load_rljob
    from kuberl_operator.launcher.run import LocalRun
    from kuberl_operator.launcher.rundir import new_run_dir

    if args.resume and not args.run_dir:
        print("error: --resume needs --run-dir (the directory of the run to continue)", file=sys.stderr)
        return 2
    names = _files(args)
    if len(names) != 1:
        print(f"error: kuberl run takes one job file (got {len(names)})", file=sys.stderr)
        return 2
    try:
        job = load_rljob(Path(names[0]), args.set or ())
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    if job.spec.suspend:  # the operator deletes a suspended job's pods; locally there is nothing to run either
        print(f"{names[0]}: spec.suspend is true: nothing to run (--set spec.suspend=false runs it)", file=sys.stderr)
        return 1
    from kuberl_operator.launcher.children import local_problems

    refused = local_problems(job)
    for problem in refused:
        print(f"{names[0]}: {problem}", file=sys.stderr)
    if refused:
        return 1
    if args.dry_run:
        from kuberl_operator.render import worker_config

        print(worker_config(job, "<run dir>/checkpoints").model_dump_json(indent=2))
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(Path("runs"), job.metadata.name)
    source = None if names[0] == "-" else Path(names[0])
    return LocalRun(job, run_dir, resume=args.resume, source=source).run()


def _template(args: argparse.Namespace) -> int:
    import yaml

    from kuberl_operator import builders
    from kuberl_operator.api.validate import load_rljob

    names = _files(args)
    try:
        jobs = [load_rljob(Path(name), args.set or ()) for name in names]
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    for job in jobs:
        cfg = builders.render_config(job)
        manifests = [builders.build_config_map(job, cfg), builders.build_secret(job, "<random, made by the operator>")]
        manifests += builders.build_services(job, cfg)
        roles = [("controller", 1), ("trainer", job.spec.trainer.replicas), ("rollout", job.spec.rollout.minReplicas)]
        image = args.worker_image or builders.DEFAULT_WORKER_IMAGE
        manifests += [builders.build_pod(job, cfg, role, i, image) for role, n in roles for i in range(n)]
        if job.spec.rewardServer is not None:
            from kuberl_operator.reward_server import build_reward_pod, build_reward_service

            manifests.append(build_reward_service(job) or {})
            manifests += [build_reward_pod(job, i, image) for i in range(job.spec.rewardServer.replicas)]
        sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
    return 0


def _export(args: argparse.Namespace) -> int:
    from kuberl_operator.launcher.export import ExportError, export

    source = Path(args.source)
    try:
        if "/" not in args.source and NAME.match(args.source) and (args.namespace or not source.exists()):
            out = _export_job(args)  # an RLJob's name (-n says so even where a folder of that name exists)
        else:
            out = export(source, Path(args.out), args.step)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{out}: a Hugging Face model (AutoModelForCausalLM/AutoTokenizer.from_pretrained, vllm serve)")
    return 0


def _export_job(args: argparse.Namespace) -> Path:
    """`kuberl export JOB OUT` (SOURCE is no local path): through an export pod, see export_job.py."""
    import asyncio

    import aiohttp
    import kopf

    from kuberl_operator.builders import DEFAULT_WORKER_IMAGE
    from kuberl_operator.export_job import export_job
    from kuberl_operator.handlers import connect
    from kuberl_operator.kube import ApiError
    from kuberl_operator.launcher.export import ExportError

    async def go() -> Path:
        settings = kopf.OperatorSettings()
        try:
            info = kopf.login_with_kubeconfig(settings=settings) or kopf.login_with_service_account(settings=settings)
        except (OSError, ValueError, kopf.LoginError) as error:
            raise ExportError(
                f"RLJob {args.source}: the kubeconfig cannot be read ({error}); give a local run directory as a path"
            ) from error
        if info is None:
            raise ExportError(f"RLJob {args.source}: no kubeconfig (and no in-cluster service account) to find it in")
        namespace = args.namespace or info.default_namespace or "default"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                return await export_job(
                    connect(info, session),
                    namespace,
                    args.source,
                    Path(args.out),
                    args.step,
                    args.image or DEFAULT_WORKER_IMAGE,
                    args.timeout,
                )
            except aiohttp.ClientConnectorError as error:  # its str() shows the SSL context object
                where = f"{error.host}:{error.port}"
                raise ExportError(
                    f"RLJob {namespace}/{args.source}: cannot reach the API server {where}: {error.os_error}"
                ) from error
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                raise ExportError(f"RLJob {namespace}/{args.source}: {error}") from error

    return asyncio.run(go())


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from kuberl_operator.settings import Settings, SettingsError

    try:
        Settings.from_env()
    except SettingsError as error:
        print(f"kuberl operator: {error}", file=sys.stderr)
        return 2
    import kuberl_operator.main  # noqa: F401 - registers the handlers with kopf

    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=args.standalone,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        # a peering name makes peering mandatory in kopf, which would pause a standalone operator
        peering_name=None if args.standalone else args.peering,
        liveness_endpoint=args.liveness,
    )
    return 0


def _release_finalizers(args: argparse.Namespace) -> int:
    import asyncio

    import aiohttp
    import kopf

    from kuberl_operator import uninstall
    from kuberl_operator.handlers import connect
    from kuberl_operator.kube import ApiError

    async def go() -> int:
        settings = kopf.OperatorSettings()
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            print("kuberl release-finalizers: no in-cluster service account and no kubeconfig", file=sys.stderr)
            return 2
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            kube = connect(info, session)
            try:
                released = await uninstall.run(
                    kube, args.operator_namespace, args.deployment, args.namespace or (), args.timeout
                )
            except (ApiError, TimeoutError, aiohttp.ClientError) as error:
                print(f"kuberl release-finalizers: {error}", file=sys.stderr)
                return 1
        print(f"stopped {args.operator_namespace}/{args.deployment}; released {len(released)} RLJob(s)")
        for name in released:
            print(f"  {name}")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return asyncio.run(go())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kuberl")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _job_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-f", "--filename", action="append", metavar="FILE", help="a job file (repeatable), as kubectl"
    )
    command.add_argument(
        "--set", action="append", metavar="PATH=VALUE", help="override a field, e.g. spec.task.promptsPerStep=16"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kuberl", description="Kubernetes-native elastic RL for LLM post-training.")
    top.add_argument("--version", action="version", version=f"kuberl {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = sub.add_parser("crd", help="print the RLJob CustomResourceDefinition")
    crd.set_defaults(func=_crd)

    validate = sub.add_parser("validate", help="check RLJob YAML files; print each problem with its field path")
    validate.add_argument("files", nargs="*", metavar="FILE", help="job files; - reads standard input")
    _job_options(validate)
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.add_argument(
        "--local",
        action="store_true",
        help="also check the model directory, dataset and reward as `kuberl run` on this machine would see them",
    )
    validate.set_defaults(func=_validate)

    explain = sub.add_parser("explain", help="document an RLJob field, like `kubectl explain`")
    explain.add_argument("field", nargs="?", help="dotted path, e.g. spec.c3po.tokenBudget")
    explain.add_argument("--recursive", action="store_true", help="list nested fields")
    explain.add_argument("--markdown", action="store_true", help="print the whole API reference as Markdown")
    explain.set_defaults(func=_explain)

    run = sub.add_parser("run", help="run an RLJob on this machine as local processes (no cluster)")
    run.add_argument("files", nargs="?", metavar="FILE", type=lambda x: [x], help="the job file; - reads stdin")
    _job_options(run)
    run.add_argument("--dry-run", action="store_true", help="print the rendered worker config and start nothing")
    run.add_argument(
        "--run-dir",
        help="where config, logs, checkpoints and metrics go: a new or empty directory, or with --resume a run of "
        "this job (default: a new runs/NAME-TIME)",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    run.set_defaults(func=_run)

    template = sub.add_parser(
        "template", help="print the objects the operator would create for a job (ConfigMap, Secret, Services, pods)"
    )
    template.add_argument("files", nargs="*", metavar="FILE", help="job files; - reads standard input")
    _job_options(template)
    template.add_argument("--worker-image", help="the operator's worker image (default: kuberl's release image)")
    template.set_defaults(func=_template)

    export = sub.add_parser(
        "export", help="copy a trained policy out of a run or a cluster job as a Hugging Face model directory"
    )
    export.add_argument(
        "source",
        metavar="RUN_DIR|JOB",
        help="a `kuberl run` directory, a checkpoint directory or one weights-<step> directory; otherwise (or with -n) "
        "the name of an RLJob (kubeconfig), whose checkpoint volume an export pod reads (RBAC: rljobs get, pods "
        "create/get/delete, pods/proxy get)",
    )
    export.add_argument("out", metavar="OUT", help="the new model directory (must not exist, or be empty)")
    export.add_argument("--step", type=int, help="the policy version (training step) to export; default: the newest")
    export.add_argument(
        "-n", "--namespace", help="the RLJob's namespace (default: the kubeconfig context's); SOURCE is then a job"
    )
    export.add_argument("--image", help="export pod image when spec.image is unset (default: the release image)")
    export.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the export pod to be Ready")
    export.set_defaults(func=_export)

    operator = sub.add_parser("operator", help="run the kopf operator that reconciles RLJobs in a cluster")
    operator.add_argument("--standalone", action="store_true", help="one replica, no peering")
    operator.add_argument("--namespace", action="append", help="watch this namespace (repeat); default: all")
    operator.add_argument("--peering", default="kuberl", help="kopf peering name for active/standby replicas")
    operator.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL")
    operator.add_argument("--verbose", action="store_true", help="debug logging")
    operator.set_defaults(func=_operator)
    release = sub.add_parser(
        "release-finalizers",
        help="stop the operator, then remove its finalizer from every RLJob (the chart's pre-delete hook)",
    )
    release.add_argument("--operator-namespace", required=True, help="namespace of the operator's Deployment")
    release.add_argument("--deployment", required=True, help="name of the operator's Deployment")
    release.add_argument("--namespace", action="append", help="RLJobs of this namespace only (repeat); default: all")
    release.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the operator's pods to go")
    release.set_defaults(func=_release_finalizers)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
