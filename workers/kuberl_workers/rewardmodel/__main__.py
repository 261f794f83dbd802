"""`python -m kuberl_workers.rewardmodel --model DIR --port N`: serve a reward model for `http` rewards.

The model is a Hugging Face sequence classifier with one label (`*ForSequenceClassification`, num_labels 1: the
usual reward model). Each item's prompt and completion are rendered as one conversation with the model's own chat
template (user turn, assistant turn), and its reward is the classifier's raw logit (vLLM pooling with
`use_activation=False`). Run it as spec.rewardServer's container:
`args: [-m, kuberl_workers.rewardmodel, --model, /models/rm, --port, "$(KUBERL_REWARD_PORT)"]`.
"""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kuberl_workers.rewardmodel", description=__doc__)
    parser.add_argument("--model", required=True, help="Hugging Face directory of the reward model")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (spec.rewardServer.port)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--max-model-len", type=int, default=4096, help="longest prompt + completion, in tokens")
    parser.add_argument("--dtype", default="auto", help="vLLM dtype (float32 on CPUs)")
    parser.add_argument("--max-completion-chars", type=int, default=65536, help="completions are cut to this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s rewardmodel: %(message)s")
    from kuberl_workers.rewardmodel.server import serve  # vLLM only once the arguments are good

    serve(args.model, args.host, args.port, args.max_model_len, args.dtype, args.max_completion_chars)


if __name__ == "__main__":
    main()
