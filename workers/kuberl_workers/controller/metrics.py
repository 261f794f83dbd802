"""The controller's Prometheus metrics (`kuberl_*`, labels job, namespace, role)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from kuberl_workers.controller.service import Controller

REWARD_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LABELS = ("job", "namespace", "role")
PHASES = ("rollout_wait", "train", "weight_sync")


class ControllerMetrics:
    """Histograms observed as events happen, plus gauges and counters read from the controller at scrape."""

    def __init__(self, job: str, namespace: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = {"job": job, "namespace": namespace, "role": "controller"}
        self.reward = Histogram(
            "kuberl_reward", "Reward of each finished rollout", LABELS, buckets=REWARD_BUCKETS, registry=self.registry
        ).labels(**self.labels)
        self.versions_spanned = Histogram(
            "kuberl_policy_versions_spanned",
            "Policy versions that produced the tokens of a finished rollout",
            LABELS,
            buckets=(1, 2, 3, 4, 6, 8, 16),
            registry=self.registry,
        ).labels(**self.labels)
        self.step_seconds = Histogram(
            "kuberl_step_phase_seconds",
            "Time per training step by phase (rollout_wait, train, weight_sync)",
            (*LABELS, "phase"),
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        for phase in PHASES:  # every phase exported from the start (count 0), not only after its first step
            self.step_seconds.labels(**self.labels, phase=phase)
        self.reward_seconds = Histogram(
            "kuberl_reward_seconds",
            "Time to score one completion, by reward of task.rewards (an http reward: its service's latency) and "
            "outcome (ok, failed)",
            (*LABELS, "reward", "outcome"),
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )

    def reward_scored(self, reward: str, seconds: float, failure: str | None) -> None:
        """One reward of one completion scored (RewardSet's observer); failures are counted by the set."""
        outcome = "failed" if failure else "ok"
        self.reward_seconds.labels(**self.labels, reward=reward, outcome=outcome).observe(seconds)

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.step_seconds.labels(**self.labels, phase=phase).observe(seconds)

    def attach(self, controller: Controller) -> None:
        self.registry.register(_Live(controller, self.labels))


class _Live(Collector):
    def __init__(self, controller: Controller, labels: dict[str, str]) -> None:
        self.controller = controller
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        c, s = self.controller, self.controller.scheduler
        names, values = list(self.labels), list(self.labels.values())

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        yield gauge("kuberl_step", "Training steps closed", s.step)
        yield gauge("kuberl_policy_version", "Policy version rollouts must use", s.version)
        yield gauge("kuberl_token_budget", "C3PO++ token budget Phi per step", s.cfg.token_budget)
        yield gauge("kuberl_budget_fill", "Fraction of the token budget generated this step", s.budget_fill())
        yield gauge("kuberl_rollouts_in_flight", "Rollouts in the inference pool", s.in_flight_count())
        yield gauge("kuberl_retention", "C3PO++ sigma in effect (fixed, or chosen by automatic retention)", s.retention)
        yield gauge(
            "kuberl_rollout_tokens_per_second", "Rollout tokens per second across the pool", c.pool_tokens_per_second()
        )
        yield gauge(
            "kuberl_desired_rollout_replicas",
            "Rollout replicas needed to fill the budget in time",
            c.desired_replicas(),
        )
        yield gauge("kuberl_reward_mean", "Mean reward of the last trained batch", c.last_reward_mean)
        workers = GaugeMetricFamily(
            "kuberl_workers_alive", "Workers with a recent heartbeat", labels=[*names[:2], "role"]
        )
        for role in ("rollout", "trainer"):
            workers.add_metric([*values[:2], role], c.alive(role))
        yield workers
        per_worker = GaugeMetricFamily(
            "kuberl_worker_tokens_per_second", "Measured tokens/s per rollout worker (EWMA)", labels=[*names, "worker"]
        )
        for worker, state in sorted(s.workers.items()):
            per_worker.add_metric([*values, worker], state.tokens_per_second or 0.0)
        yield per_worker
        totals: list[tuple[str, str, Callable[[], float]]] = [
            ("kuberl_tokens_generated", "Tokens accepted from rollout workers", lambda: s.counters.tokens_generated),
            (
                "kuberl_leases_requeued",
                "Leases returned to the queue (expiry, worker loss, release)",
                lambda: s.counters.leases_requeued,
            ),
            (
                "kuberl_leases_rejected",
                "Chunk results refused because their lease was no longer current",
                lambda: s.counters.leases_rejected,
            ),
            ("kuberl_rollouts_purged", "Rollouts purged past the retention limit", lambda: s.counters.rollouts_purged),
            (
                "kuberl_tokens_purged",
                "Generated tokens discarded by purges (never trained)",
                lambda: s.counters.tokens_purged,
            ),
            (
                "kuberl_prompts_requeued",
                "Purged prompts requeued as a fresh group",
                lambda: s.counters.prompts_requeued,
            ),
            (
                "kuberl_prompts_dropped",
                "Prompts dropped (purged twice, or a chunk that failed MAX_CHUNK_FAILURES times)",
                lambda: s.counters.prompts_dropped,
            ),
            (
                "kuberl_chunks_failed",
                "Chunks the engine refused alone or whose result was invalid",
                lambda: s.counters.chunks_failed,
            ),
            ("kuberl_prompts_skipped", "Prompts longer than maxPromptTokens", lambda: c.prompts.skipped),
            (
                "kuberl_groups_zero_advantage",
                "Trained groups whose rewards were all equal",
                lambda: c.zero_advantage_groups,
            ),
            ("kuberl_bad_requests", "Requests refused with 4xx", lambda: c.bad_requests),
        ]
        for name, doc, read in totals:
            yield counter(name, doc, read())
        failures = CounterMetricFamily(
            "kuberl_reward_failures",
            "Completions a reward scored 0 for a reason (timeout, error, crash, nan, type, http_<status>, "
            "connection, a code reward's tests_failed or sandbox refusal)",
            labels=[*names, "reward", "reason"],
        )
        for (reward, reason), count in sorted(c.rewards.failures.items()):
            failures.add_metric([*values, reward, reason], count)
        yield failures
