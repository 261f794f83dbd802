"""The job's inputs checked before anything runs: the model directory, the dataset, the reward and the lengths.

`python -m kuberl_workers.preflight [--config FILE]` prints every problem (field, file and line) and exits with
EXIT_INVALID_INPUT (3) when there is one; `kuberl run` runs it before starting any worker and the controller at its
start, so that a bad input fails the job with its reason instead of a restart loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from kuberl_workers.config import (
    EXIT_INVALID_INPUT,
    INVALID_INPUT_MARK,
    TERMINATION_LOG,
    WorkerConfig,
)

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def problems(cfg: WorkerConfig) -> list[str]:
    """Every problem with the job's inputs, each naming the spec field and the file; [] when all is well."""
    found = _model_problems(cfg) + _dataset_problems(cfg) + _reward_problems(cfg)
    return found or _prompt_problems(cfg)


def _model_problems(cfg: WorkerConfig) -> list[str]:
    if not cfg.model.path:  # a built-in model is built by the workers themselves
        return []
    folder = Path(cfg.model.path)
    if not folder.is_dir():
        return [f"model.path: {folder}: no such directory"]
    out = []
    if not (folder / "config.json").is_file():
        out.append(f"model.path: {folder}: no config.json (not a Hugging Face model directory)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        out.append(f"model.path: {folder}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if not any(folder.glob("*.safetensors")):
        out.append(f"model.path: {folder}: no *.safetensors weights")
    try:
        config = json.loads((folder / "config.json").read_text()) if not out else {}
    except (OSError, ValueError) as error:
        return [f"model.path: {folder / 'config.json'}: unreadable ({error})"]
    context = config.get("max_position_embeddings")
    needed = cfg.task.maxPromptTokens + cfg.task.maxNewTokens
    if isinstance(context, int) and needed > context:
        out.append(
            f"task.maxPromptTokens + task.maxNewTokens = {needed} exceeds the model's context of {context} tokens "
            f"(max_position_embeddings in {folder / 'config.json'})"
        )
    return out


def _dataset_problems(cfg: WorkerConfig) -> list[str]:
    from kuberl_workers.controller.dataset import read_examples

    found = []
    sources = [("task.dataset.path", cfg.task)] + ([("eval.dataset.path", cfg.eval)] if cfg.eval else [])
    for field, source in sources:
        if not source.datasetPath:
            continue
        try:
            read_examples(source.datasetPath, source.promptField, source.answerField, source.datasetFormat)
        except FileNotFoundError:
            found.append(f"{field}: {source.datasetPath}: no such file")
        except (OSError, ValueError) as error:
            found.append(f"{field}: {error}")
    return found


def _prompt_problems(cfg: WorkerConfig) -> list[str]:
    """At least one prompt renders and fits in task.maxPromptTokens (the controller's own search, bounded)."""
    from kuberl_workers.controller.dataset import PromptSet
    from kuberl_workers.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(cfg.model, cfg.seed)
    except Exception as error:  # transformers raises many kinds for a broken tokenizer file
        where = f"model.path: {cfg.model.path}" if cfg.model.path else f"model.builtin: {cfg.model.builtin}"
        return [f"{where}: the tokenizer does not load ({type(error).__name__}: {error})"]
    try:
        prompts = PromptSet(cfg.task, tokenizer, cfg.seed)
        for index in range(prompts.max_skips):
            if prompts(index) is not None:
                return []
    except ValueError as error:
        return [str(error)]
    return []


def _reward_problems(cfg: WorkerConfig) -> list[str]:
    """Each reward of task.rewards can run: a rule exists, a Python function imports (in a child process, under
    the reward timeout), an http reward's auth value is in the environment, a code reward's rows have tests.
    """
    import os

    from kuberl_workers.controller.rewards import REGISTRY

    found = []
    for i, reward in enumerate(cfg.task.rewards):
        field = f"task.rewards[{i}]"
        if reward.kind == "builtin" and reward.builtin not in REGISTRY:
            found.append(f"{field}.builtin: {reward.builtin!r} is not a rule here (known: {', '.join(REGISTRY)})")
        elif reward.kind == "python":
            problem = _python_problem(reward.function or "", reward.path, cfg.limits.rewardTimeoutSeconds * 6)
            if problem:
                found.append(f"{field}.python: {problem}")
        elif reward.kind == "http" and reward.authEnv and not os.environ.get(reward.authEnv):
            found.append(f"{field}.http.authSecret: the environment variable {reward.authEnv} is not set")
        elif reward.kind == "code" and cfg.task.datasetPath:
            from kuberl_workers.controller.dataset import read_dataset

            with contextlib.suppress(OSError, ValueError):  # the dataset's own problems are reported above
                _, rows = read_dataset(cfg.task.datasetPath, cfg.task.promptField, cfg.task.answerField)
                if not any(isinstance(row.get(reward.testsField), str) for row in rows):
                    found.append(f"{field}.code.testsField: no row of {cfg.task.datasetPath} has {reward.testsField!r}")
    return found


def _python_problem(function: str, path: str | None, timeout: float) -> str | None:
    """Why `module:function` does not load, or None; imported in a child process (its import runs user code)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    from kuberl_workers.controller.rewards.python_fn import check_loads

    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        executor.submit(check_loads, function, path).result(timeout=timeout)
    except FutureTimeout:
        return f"importing {function} took longer than {timeout:.0f} s"
    except Exception as error:  # ImportError, SyntaxError, AttributeError ... of the user's module
        return f"{function} does not load: {type(error).__name__}: {error}"
    finally:
        for process in list(getattr(executor, "_processes", {}).values()):
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)
    return None


def fail(found: list[str]) -> NoReturn:
    """Log each problem, leave them as the container's termination message, exit EXIT_INVALID_INPUT."""
    for problem in found:
        log.error("%s%s", INVALID_INPUT_MARK, problem)
    message = Path(TERMINATION_LOG)
    if message.exists():  # the kubelet makes it in a container; elsewhere (kuberl run) the log says it
        with contextlib.suppress(OSError):
            message.write_text("\n".join(found)[:4000])
    sys.exit(EXIT_INVALID_INPUT)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s preflight: %(message)s")
    from kuberl_workers.entry import start

    cfg, _ = start("preflight", __doc__ or "", token=False)
    found = problems(cfg)
    if found:
        fail(found)


if __name__ == "__main__":
    main()
