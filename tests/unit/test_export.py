"""`kuberl export`: which version is copied, the export pod and its stream, and the errors that name what exists."""

from __future__ import annotations

import asyncio
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kuberl_operator.api.podschema import schema_problems
from kuberl_operator.api.rljob import RLJob
from kuberl_operator.cli import main
from kuberl_operator.export_job import (
    TOKEN_HEADER,
    _check_files,
    _choose,
    _stream_tar,
    build_export_pod,
    export_pod_name,
)
from kuberl_operator.kube import ApiError, Kube
from kuberl_operator.launcher.export import ExportError, export, final_model
from kuberl_workers.export.server import TOKEN_HEADER as SERVER_TOKEN_HEADER
from kuberl_workers.export.server import ExportServer
from kuberl_workers.published import published_versions
from support.net import http_get
from support.specs import minimal_job


def _version(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"weights-{step:08d}"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if complete:
        (path / "model.safetensors").write_bytes(b"w")
    (path / "tokenizer.json").write_text("{}")
    return path


def test_the_newest_version_by_default_and_a_chosen_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (2, 10, 4):
        _version(run / "checkpoints", step)
    assert list(published_versions(run)) == [2, 4, 10]
    assert final_model(run) == run / "checkpoints" / "weights-00000010"
    assert sorted(p.name for p in export(run, tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    export(run / "checkpoints", tmp_path / "four", step=4)  # a checkpoint volume's folder works too
    assert (tmp_path / "four" / "model.safetensors").exists()


def test_errors_name_what_is_missing_and_nothing_is_overwritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ExportError, match="no such directory"):
        export(run, tmp_path / "out")
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExportError, match="no published weights"):
        export(run, tmp_path / "out")
    second = _version(run / "checkpoints", 2)
    _version(run / "checkpoints", 3, complete=False)
    with pytest.raises(ExportError, match="published steps: 2, 3"):
        export(run, tmp_path / "out", step=7)
    with pytest.raises(ExportError, match=r"lacks model\.safetensors; complete versions: \[2\] \(--step N\)"):
        export(run, tmp_path / "out")
    assert export(second, tmp_path / "named").name == "named"  # the version directory the run summary names
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("a user's file")
    with pytest.raises(ExportError, match="not an empty directory"):
        export(run, taken, step=2)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]


# --- a cluster job's volume: the export pod, its server, and the stream the CLI reads through the pod proxy


def test_the_cli_and_the_pod_agree_on_the_token_header() -> None:
    assert TOKEN_HEADER == SERVER_TOKEN_HEADER


def _job(**spec: Any) -> RLJob:
    return RLJob.model_validate(minimal_job(**spec))


def test_the_export_pod_mounts_the_claim_read_only_and_is_owned_by_the_job() -> None:
    job = _job(
        checkpoint={"volume": "ckpt"},
        image="registry.example/kuberl:1",
        controller={"template": {"spec": {"nodeSelector": {"pool": "cpu"}, "imagePullSecrets": [{"name": "pull"}]}}},
    )
    pod = build_export_pod(job, "uid-1", export_pod_name("demo", "abc123"))
    assert pod["metadata"]["name"] == "demo-export-abc123"
    assert (
        pod["metadata"]["ownerReferences"][0] | {"uid": "uid-1", "kind": "RLJob"}
        == pod["metadata"]["ownerReferences"][0]
    )
    # not a child the operator reconciles: no kuberl.io/job label and not managed by the operator
    assert "kuberl.io/job" not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kuberl-cli"
    spec = pod["spec"]
    assert spec["volumes"] == [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": True}}
    ]
    assert spec["containers"][0]["volumeMounts"][0]["readOnly"] is True
    assert spec["containers"][0]["image"] == "registry.example/kuberl:1"
    assert spec["nodeSelector"] == {"pool": "cpu"} and spec["imagePullSecrets"] == [{"name": "pull"}]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] > 0
    assert schema_problems({"metadata": {}, "spec": spec}) == []
    with pytest.raises(ExportError, match=r"spec\.checkpoint\.volume is unset"):
        build_export_pod(_job(), "uid-1", "demo-export-x")


@pytest.fixture
def export_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "volume"
    _version(root, 3)
    big = _version(root, 7)
    (big / "model.safetensors").write_bytes(bytes(range(256)) * 40_000)  # several chunks
    server = ExportServer(root, "127.0.0.1", 0, "secret", idle_seconds=60)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_the_export_server_lists_versions_and_streams_one_that_extracts_to_the_same_files(
    export_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = export_server
    assert http_get(f"{url}/healthz")[0] == 200
    assert http_get(f"{url}/versions")[0] == 401  # the pod's one-time token is required

    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            kube = Kube(url, session)
            listing = await kube.call("GET", "/versions", headers={TOKEN_HEADER: "secret"})
            await _stream_tar(kube, "/versions/7.tar", {TOKEN_HEADER: "secret"}, tmp_path / "copy")
            with pytest.raises(ApiError, match="no published version 9"):
                await _stream_tar(kube, "/versions/9.tar", {TOKEN_HEADER: "secret"}, tmp_path / "none")
            return dict(listing["versions"])

    (tmp_path / "copy").mkdir()
    (tmp_path / "none").mkdir()
    versions = asyncio.run(go())
    assert sorted(versions) == ["3", "7"] and versions["7"]["missing"] == []
    for name, size in versions["7"]["files"].items():
        copied = tmp_path / "copy" / name
        assert copied.stat().st_size == size
        assert copied.read_bytes() == (root / "weights-00000007" / name).read_bytes()
    assert _choose(versions, None, "demo")[0] == 7
    with pytest.raises(ExportError, match=r"no weights for step 5; published steps: \[3, 7\]"):
        _choose(versions, 5, "demo")


def test_a_stream_that_breaks_off_is_an_error_and_leaves_no_partial_model(tmp_path: Path) -> None:
    """A tar cut mid-file (the pod killed, the proxy timing out) raises; the caller then removes its staging."""
    source = _version(tmp_path / "volume", 1)
    (source / "model.safetensors").write_bytes(b"x" * 100_000)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(source / "model.safetensors", arcname="model.safetensors")
    cut = buffer.getvalue()[:50_000]

    class Truncated(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(cut)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncated)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            await _stream_tar(Kube(f"http://127.0.0.1:{server.server_address[1]}", session), "/x", {}, tmp_path)

    try:
        with pytest.raises(ExportError, match="broke off"):
            asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ExportError, match=r"differs from the volume in \['model\.safetensors'\]"):
        _check_files(tmp_path, {"model.safetensors": 100_000}, 1)


def test_kuberl_export_reads_a_name_as_a_job_and_a_path_as_a_run(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1  # a path: the local export
    result_env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-such-config")}
    result = subprocess.run(
        [sys.executable, "-m", "kuberl_operator.cli", "export", "my-job", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=result_env,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "my-job" in result.stderr and "kubeconfig" in result.stderr.lower()
    (tmp_path / "my-job").mkdir()  # a folder of that name: -n still means the cluster job
    named = subprocess.run([*result.args, "-n", "team"], capture_output=True, text=True, env=result_env, cwd=tmp_path)
    assert named.returncode == 1 and "RLJob my-job: the kubeconfig cannot be read" in named.stderr
