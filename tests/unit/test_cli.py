"""The `kuberl` command line: crd, validate, explain."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kuberl_operator.api.crd import crd_yaml
from kuberl_operator.api.validate import validate_document, validate_file
from kuberl_operator.cli import main
from support.specs import minimal_job

ROOT = Path(__file__).resolve().parents[2]


def test_crd_prints_the_generated_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_validate_examples_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert main(["validate", *files]) == 0
    out = capsys.readouterr().out
    assert all(f"{f}: valid" in out for f in files)


def test_validate_bad_spec_prints_each_problem_and_exits_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = minimal_job(rollout={"minReplicas": 4, "maxReplicas": 2}, c3po={"chunkTokens": 0})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal_job()))
    assert main(["validate", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert f"{bad}: spec.rollout.minReplicas: must be <= maxReplicas" in lines
    assert f"{bad}: spec.c3po.chunkTokens: input should be greater than or equal to 1 (got 0)" in lines
    assert len(lines) == 2
    assert f"{good}: valid" in captured.out


def test_explain_field_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "spec.c3po.tokenBudget"]) == 0
    out = capsys.readouterr().out
    assert "FIELD: tokenBudget <integer>" in out and "Phi" in out and "default 4096" in out
    assert main(["explain", "rlj.spec.rollout"]) == 0
    out = capsys.readouterr().out
    assert "minReplicas\t<integer>" in out and "Rule: self.minReplicas <= self.maxReplicas" in out
    assert main(["explain", "spec.nope"]) == 1
    assert "field 'nope' does not exist in spec" in capsys.readouterr().err
    assert main(["explain", "spec", "--recursive"]) == 0
    assert "      alpha\t<number>" in capsys.readouterr().out


def test_console_script_installed() -> None:
    """The `kuberl` entry point from pyproject works as a process, with exit codes."""
    exe = shutil.which("kuberl", path=str(Path(sys.executable).parent))
    assert exe is not None
    done = subprocess.run(
        [exe, "validate", str(ROOT / "examples" / "quickstart.yaml")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run([exe, "bogus"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_kubectl_habits_version_duplicate_keys_other_kinds_and_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["--version"])
    assert shown.value.code == 0
    dup = tmp_path / "dup.yaml"
    dup.write_text("apiVersion: kuberl.io/v1alpha1\nkind: RLJob\nmetadata: {name: a}\nmetadata: {name: b}\nspec: {}\n")
    assert [str(p) for p in validate_file(dup)] == [
        f"cannot read: duplicate key 'metadata' (first at line 3)   in \"{dup}\", line 4, column 1"
    ]
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    assert [str(p) for p in validate_file(other)] == [
        "kind: not an RLJob (kind 'Deployment', apiVersion 'apps/v1'): expected kind 'RLJob', apiVersion "
        "'kuberl.io/v1alpha1'"
    ]
    typo = minimal_job()
    typo["spec"]["task"]["promptPerStep"] = 3
    assert [str(p) for p in validate_document(typo)] == [
        "spec.task.promptPerStep: unknown field; did you mean 'promptsPerStep'?"
    ]


def test_stdin_filename_set_dry_run_and_template(tmp_path: Path) -> None:
    quickstart = str(Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml")
    cli = [sys.executable, "-m", "kuberl_operator.cli"]

    def kuberl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], input=stdin, capture_output=True, text=True, timeout=120)

    text = Path(quickstart).read_text()
    assert kuberl("validate", "-", stdin=text).stdout == "-: valid\n"
    refused = kuberl("validate", "-f", quickstart, "--set", "spec.task.promptsPerStep=0")
    assert refused.returncode == 1 and "spec.task.promptsPerStep: input should be greater" in refused.stderr
    assert "--set 'oops'" in kuberl("validate", quickstart, "--set", "oops").stderr
    rendered = kuberl("run", "-", "--dry-run", "--set", "spec.seed=7", "--set", "spec.task.temperature=0.5", stdin=text)
    config = yaml.safe_load(rendered.stdout)
    assert rendered.returncode == 0 and config["seed"] == 7 and config["task"]["temperature"] == 0.5
    objects = list(yaml.safe_load_all(kuberl("template", quickstart, "--worker-image", "img:1").stdout))
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ConfigMap", "Secret", "Service", "Service", "Pod", "Pod", "Pod"], kinds
    assert {o["spec"]["containers"][0]["image"] for o in objects if o["kind"] == "Pod"} == {"img:1"}
    assert kuberl("validate").returncode != 0 and "no job file" in kuberl("validate").stderr


def test_validate_local_checks_the_files_as_kuberl_run_would(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "3+3"}\n')
    job = minimal_job(task={"dataset": {"path": str(data)}, "reward": "numeric"})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["validate", str(path)]) == 0  # the spec alone is valid
    done = subprocess.run(
        [sys.executable, "-m", "kuberl_operator.cli", "validate", "--local", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert f"{path}: task.dataset.path: {data}:2: field 'answer' missing" in done.stderr
