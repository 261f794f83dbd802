"""Invalid RLJob specs, each breaking one thing: the cases on which kuberl's validation, the emulated API server
(tests/unit/test_cel_agreement.py) and the real one (tests/e2e/test_real_apiserver.py) must give one verdict."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kuberl_workers.catalog import BUILTIN_CONTEXT
from support.specs import DELETE, minimal_job

# (id, mutations, field paths both must report). Each case breaks exactly one thing.
INVALID: list[tuple[str, dict[str, Any], set[str]]] = [
    ("prompts-zero", {"spec.task.promptsPerStep": 0}, {"spec.task.promptsPerStep"}),
    ("group-of-one", {"spec.task.samplesPerPrompt": 1}, {"spec.task.samplesPerPrompt"}),
    ("temperature-zero", {"spec.task.temperature": 0}, {"spec.task.temperature"}),
    ("unknown-reward", {"spec.task.reward": "bleu"}, {"spec.task.reward"}),
    ("bad-dtype", {"spec.model.dtype": "int8"}, {"spec.model.dtype"}),
    ("clip-one", {"spec.algorithm.clipEpsilon": 1.0}, {"spec.algorithm.clipEpsilon"}),
    ("not-grpo", {"spec.algorithm.name": "ppo"}, {"spec.algorithm.name"}),
    ("negative-budget", {"spec.c3po.tokenBudget": -5}, {"spec.c3po.tokenBudget"}),
    ("replicas-string", {"spec.trainer.replicas": "2"}, {"spec.trainer.replicas"}),
    ("too-many-rollouts", {"spec.rollout.maxReplicas": 5000}, {"spec.rollout.maxReplicas"}),
    ("suspend-string", {"spec.suspend": "yes"}, {"spec.suspend"}),
    ("unknown-field", {"spec.rollout.autoscale": True}, {"spec.rollout.autoscale"}),
    ("bad-claim-name", {"spec.model": {"volume": "Bad_Claim", "path": "m"}}, {"spec.model.volume"}),
    ("missing-task", {"spec.task": DELETE}, {"spec.task"}),
    # a bound is no blocking error: the API server still runs CEL, and the heartbeat rule fails too
    (
        "lease-zero",
        {"spec.faultTolerance.leaseSeconds": 0},
        {"spec.faultTolerance.leaseSeconds", "spec.faultTolerance.heartbeatSeconds"},
    ),
    ("alpha-zero", {"spec.algorithm.icepop.alpha": 0}, {"spec.algorithm.icepop.alpha"}),
    ("bad-strategy", {"spec.trainer.strategy": "zero3"}, {"spec.trainer.strategy"}),
    ("lr-string", {"spec.algorithm.learningRate": "fast"}, {"spec.algorithm.learningRate"}),
    ("retention-negative", {"spec.c3po.retention": -1}, {"spec.c3po.retention"}),
    ("keep-zero", {"spec.checkpoint.keep": 0}, {"spec.checkpoint.keep"}),
    # cross-field rules (CEL x-kubernetes-validations)
    ("min-above-max", {"spec.rollout": {"minReplicas": 4, "maxReplicas": 2}}, {"spec.rollout.minReplicas"}),
    ("pin-above-max", {"spec.rollout": {"maxReplicas": 3, "replicas": 5}}, {"spec.rollout.replicas"}),
    ("pin-below-min", {"spec.rollout": {"minReplicas": 2, "maxReplicas": 3, "replicas": 1}}, {"spec.rollout.replicas"}),
    ("alpha-not-below-beta", {"spec.algorithm.icepop": {"alpha": 1.0, "beta": 1.0}}, {"spec.algorithm.icepop.alpha"}),
    ("chunk-above-max-tokens", {"spec.c3po.chunkTokens": 512}, {"spec.c3po.chunkTokens"}),
    ("beyond-builtin-context", {"spec.task.maxNewTokens": 257}, {"spec.task.maxNewTokens"}),
    ("pool-below-group", {"spec.c3po.inferencePoolCapacity": 2}, {"spec.c3po.inferencePoolCapacity"}),
    ("model-path-and-builtin", {"spec.model.path": "/models/x"}, {"spec.model"}),
    ("model-neither", {"spec.model": {"dtype": "float32"}}, {"spec.model"}),
    ("dataset-volume-no-path", {"spec.task.dataset.volume": "data"}, {"spec.task.dataset.volume"}),
    (
        "heartbeat-not-below-lease",
        {"spec.faultTolerance": {"heartbeatSeconds": 10, "leaseSeconds": 10}},
        {"spec.faultTolerance.heartbeatSeconds"},
    ),
    (
        "backoff-above-cap",
        {"spec.faultTolerance": {"restartBackoffSeconds": 100, "maxRestartBackoffSeconds": 50}},
        {"spec.faultTolerance.restartBackoffSeconds"},
    ),
    ("shard-group-without-fsdp2", {"spec.trainer.shardGroupSize": 1}, {"spec.trainer.shardGroupSize"}),
    ("shard-group-zero", {"spec.trainer": {"strategy": "fsdp2", "shardGroupSize": 0}}, {"spec.trainer.shardGroupSize"}),
    (
        "shard-group-does-not-divide",
        {"spec.trainer": {"strategy": "fsdp2", "replicas": 3, "shardGroupSize": 2}},
        {"spec.trainer.shardGroupSize"},
    ),
    (
        "auto-retention-bound-with-fixed-retention",
        {"spec.c3po": {"retention": 2, "maxRetention": 4}},
        {"spec.c3po.maxRetention"},
    ),
    (
        "system-prompt-raw",
        {"spec.task.promptFormat": "raw", "spec.task.systemPrompt": "Be brief."},
        {"spec.task.systemPrompt"},
    ),
    ("tiny-has-no-chat-template", {"spec.task.promptFormat": "chat"}, {"spec.task.promptFormat"}),
    ("tiny-system-prompt", {"spec.task.systemPrompt": "Be brief."}, {"spec.task.promptFormat"}),
    ("dataset-unknown-suffix", {"spec.task.dataset": {"path": "/data/train.csv"}}, {"spec.task.dataset.path"}),
    ("ppo-epochs-zero", {"spec.algorithm.ppoEpochs": 0}, {"spec.algorithm.ppoEpochs"}),
    ("micro-batch-tiny", {"spec.trainer.maxTokensPerMicroBatch": 1}, {"spec.trainer.maxTokensPerMicroBatch"}),
    ("unknown-builtin-model", {"spec.model.builtin": "gpt-5"}, {"spec.model.builtin"}),
    # task.rewards (#17): one-of rules on list items, unique names across the list
    ("reward-and-rewards", {"spec.task.rewards": [{"name": "a", "builtin": "math"}]}, {"spec.task"}),
    ("reward-neither", {"spec.task.reward": DELETE}, {"spec.task"}),
    (
        "reward-no-source",
        {"spec.task.reward": DELETE, "spec.task.rewards": [{"name": "a", "weight": 2.0}]},
        {"spec.task.rewards[0]"},
    ),
    (
        "reward-names-repeat",
        {
            "spec.task.reward": DELETE,
            "spec.task.rewards": [{"name": "a", "builtin": "math"}, {"name": "a", "code": {}}],
        },
        {"spec.task.rewards"},
    ),
    (
        "reward-configmap-and-path",
        {
            "spec.task.reward": DELETE,
            "spec.task.rewards": [{"name": "a", "python": {"function": "m:f", "configMap": "c", "path": "p.py"}}],
        },
        {"spec.task.rewards[0].python.configMap"},
    ),
    (
        "reward-bad-url",
        {"spec.task.reward": DELETE, "spec.task.rewards": [{"name": "a", "http": {"url": "x"}}]},
        {"spec.task.rewards[0].http.url"},
    ),
    ("name-uppercase", {"metadata.name": "Bad_Name"}, {"metadata.name"}),
    ("name-too-long", {"metadata.name": "j" * 41}, {"metadata.name"}),
]


def valid_specs() -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        lo = draw(st.integers(1, 64))
        hi = lo + draw(st.integers(0, 64))
        pinned = draw(st.one_of(st.none(), st.integers(lo, hi)))
        model = draw(
            st.sampled_from(
                [
                    {"builtin": "tiny"},
                    {"builtin": "smollm2-135m-instruct"},
                    {"path": "/m"},
                    {"volume": "models", "path": "m"},
                ]
            )
        )
        # a built-in model's context holds the default 256 prompt tokens plus the new ones
        max_new = draw(st.integers(1, BUILTIN_CONTEXT[model["builtin"]] - 256 if "builtin" in model else 131072))
        group = draw(st.integers(2, 1024))
        lease = draw(st.integers(2, 86400))
        backoff_cap = draw(st.integers(0, 86400))
        alpha = draw(st.floats(0.01, 1.0))
        rollout: dict[str, Any] = {"minReplicas": lo, "maxReplicas": hi}
        if pinned is not None:
            rollout["replicas"] = pinned
        spec: dict[str, Any] = {
            "model": model,
            "task": {
                "dataset": draw(
                    st.sampled_from(
                        [
                            {"builtin": "arithmetic"},
                            {"path": "/d.jsonl"},
                            {"path": "/d.parquet"},
                            {"path": "/d", "format": "parquet"},
                        ]
                    )
                ),
                "reward": draw(st.sampled_from(["exact_match", "numeric", "format"])),
                "samplesPerPrompt": group,
                "maxNewTokens": max_new,
                "temperature": draw(st.floats(0.05, 2.0)),
            },
            "algorithm": {
                "icepop": {"alpha": alpha, "beta": draw(st.floats(max(1.0, alpha + 0.01), 1000.0))},
                "steps": draw(st.integers(1, 10_000_000)),
            },
            "c3po": {
                "chunkTokens": draw(st.integers(1, max_new)),
                "inferencePoolCapacity": draw(st.integers(group, 1_000_000)),
                "retention": draw(st.integers(0, 1000)),
            },
            "trainer": {
                "replicas": draw(st.integers(1, 4096)),
                "strategy": "ddp",
                "maxTokensPerMicroBatch": draw(st.integers(16, 100_000_000)),
                "gradientCheckpointing": draw(st.booleans()),
            },
            "rollout": rollout,
            "faultTolerance": {
                "leaseSeconds": lease,
                "heartbeatSeconds": draw(st.integers(1, min(lease - 1, 3600))),
                "maxRestartBackoffSeconds": backoff_cap,
                "restartBackoffSeconds": draw(st.integers(0, min(backoff_cap, 3600))),
            },
            "suspend": draw(st.booleans()),
        }
        if spec["model"] != {"builtin": "tiny"}:  # the tiny model has no chat template
            spec["task"]["promptFormat"] = draw(st.sampled_from(["auto", "chat", "raw"]))
            if spec["task"]["promptFormat"] != "raw" and draw(st.booleans()):
                spec["task"]["systemPrompt"] = "Answer with a number."
        return minimal_job(**spec)

    return build()


@st.composite
def boundary_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Specs around the cross-field rules' boundaries: valid and invalid ones mixed."""
    return minimal_job(
        rollout={
            "minReplicas": draw(st.integers(1, 5)),
            "maxReplicas": draw(st.integers(1, 5)),
            **({"replicas": draw(st.integers(1, 6))} if draw(st.booleans()) else {}),
        },
        task={
            "dataset": {"builtin": "arithmetic"},
            "reward": "numeric",
            "samplesPerPrompt": draw(st.integers(2, 6)),
            "maxNewTokens": draw(st.integers(1, 8)),
        },
        c3po={"chunkTokens": draw(st.integers(1, 8)), "inferencePoolCapacity": draw(st.integers(1, 8))},
        algorithm={"icepop": {"alpha": draw(st.sampled_from([0.5, 1.0])), "beta": draw(st.sampled_from([1.0, 2.0]))}},
        faultTolerance={
            "heartbeatSeconds": draw(st.integers(1, 4)),
            "leaseSeconds": draw(st.integers(1, 4)),
            "restartBackoffSeconds": draw(st.integers(0, 3)),
            "maxRestartBackoffSeconds": draw(st.integers(0, 3)),
        },
    )
