"""The controller service: the scheduler plus rewards, worker liveness, trainer hand-off and checkpoints."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberl_workers import checkpoint
from kuberl_workers.config import WorkerConfig
from kuberl_workers.controller.dataset import PromptSet
from kuberl_workers.controller.evaluation import Evaluator
from kuberl_workers.controller.metrics import ControllerMetrics
from kuberl_workers.controller.relay import RelayTree
from kuberl_workers.controller.reporting import Reporters
from kuberl_workers.controller.rewards import RewardFn, RewardInput, RewardSet
from kuberl_workers.controller.samples import SampleLog, pick
from kuberl_workers.controller.scheduler import MAX_CHUNK_FAILURES, Batch, Scheduler, SchedulerConfig
from kuberl_workers.controller.state import Rollout
from kuberl_workers.controller.steps import rollout_stats
from kuberl_workers.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "controller"


@dataclass
class Peer:
    role: str
    last_seen: float
    version: int = 0
    address: str = ""


HISTORY_IN_CHECKPOINT = 64  # per-step history entries a checkpoint carries over a restart


class Controller:
    """One per job. Every method is called from the event loop; none blocks on I/O except checkpoint writes."""

    def __init__(
        self,
        cfg: WorkerConfig,
        tokenizer: Tokenizer | None = None,
        reward: RewardFn | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.seed)
        self.prompts = PromptSet(cfg.task, self.tokenizer, cfg.seed)
        self.metrics = ControllerMetrics(cfg.job, cfg.namespace)
        self.rewards = RewardSet(cfg.task.rewards, cfg.limits, rule=reward, observe=self.metrics.reward_scored)
        self.sched_cfg = SchedulerConfig(
            token_budget=cfg.c3po.tokenBudget,
            retention=cfg.c3po.retention,
            max_purged_share=cfg.c3po.maxPurgedTokenShare,
            max_retention=cfg.c3po.maxRetention,
            pool_capacity=cfg.c3po.inferencePoolCapacity,
            chunk_tokens=cfg.c3po.chunkTokens,
            group_size=cfg.task.samplesPerPrompt,
            prompts_per_step=cfg.task.promptsPerStep,
            max_new_tokens=cfg.task.maxNewTokens,
            lease_seconds=cfg.fault.leaseSeconds,
            seed=cfg.seed,
        )
        self.checkpoint_dir = Path(cfg.checkpoint.dir)
        self.weights_uri = ""
        rollout_port = cfg.ports.rollout
        self.relay = RelayTree(relay_url=lambda address, version: f"http://{address}:{rollout_port}/weights/{version}")
        self.history: list[dict[str, Any]] = []  # one entry per trained step, for the launcher's metrics
        self.scheduler = self._restore() or Scheduler(self.sched_cfg, self.prompts)
        self.peers: dict[str, Peer] = {}
        self.replay: dict[int, Batch] = {}  # batches since the last checkpoint, for a gang restart
        self._purged_recorded = self.scheduler.counters.rollouts_purged  # at the last history entry
        self.reporters = Reporters(cfg)  # TensorBoard, MLflow, W&B as spec.reporting says
        self.samples = SampleLog()
        self.evaluator: Evaluator | None = None
        if cfg.eval is not None:
            self.evaluator = Evaluator(
                cfg.eval,
                cfg.task,
                self.tokenizer,
                cfg.seed,
                cfg.algorithm.steps,
                cfg.fault.leaseSeconds,
                self.checkpoint_dir,
                on_summary=self._eval_done,
            )
        self.last_checkpoint = ""
        self.last_reward_mean = 0.0
        self.last_eval: dict[str, Any] | None = None
        self.zero_advantage_groups = 0
        self.bad_requests = 0
        self._pending_rewards: set[asyncio.Task[None]] = set()
        self._step_started = clock()
        self._published_at: float | None = None
        self._waiting: tuple[str, int, str] = ("", -1, "")  # (what, step, since) of the current step's wait
        self.metrics.attach(self)

    # --- checkpoints ---------------------------------------------------------------------------------

    def _restore(self, max_step: int | None = None) -> Scheduler | None:
        found = checkpoint.latest_good_json(self.checkpoint_dir, CHECKPOINT_PREFIX, max_step)
        if found is None:
            return None
        step, state = found
        log.info("restored controller state of step %d from %s", step, self.checkpoint_dir)
        self.weights_uri = state.get("weightsUri", "")
        # steps trained before a restart but not yet read by the launcher stay readable (metrics.jsonl has no gap)
        self.history = [e for e in state.get("history") or [] if e.get("step", 0) <= step]
        return Scheduler.restore(self.sched_cfg, self.prompts, state["scheduler"])

    def write_checkpoint(self) -> Path:
        path = checkpoint.step_path(self.checkpoint_dir, CHECKPOINT_PREFIX, self.scheduler.step)
        state = {
            "scheduler": self.scheduler.state(),
            "weightsUri": self.weights_uri,
            "history": self.history[-HISTORY_IN_CHECKPOINT:],
        }
        checkpoint.write_json(path, state)
        checkpoint.prune(self.checkpoint_dir, CHECKPOINT_PREFIX, self.cfg.checkpoint.keep)
        self.last_checkpoint = str(path)
        return path

    # --- peers -----------------------------------------------------------------------------------------

    def seen(self, worker: str, role: str, version: int | None = None, address: str = "") -> Peer:
        peer = self.peers.setdefault(worker, Peer(role=role, last_seen=self.clock()))
        peer.last_seen = self.clock()
        if version is not None:
            peer.version = version
        if address:
            peer.address = address
        return peer

    def registered(self, worker: str, role: str, version: int | None, address: str) -> Peer:
        """A worker process starts. A rollout worker's name already in the scheduler is a previous incarnation
        (its pod recreated before its heartbeats ran out): that one's leases go back to the queue, and a drain
        aimed at it does not stop the new process.
        """
        if role == "rollout" and worker in self.scheduler.workers:
            requeued = self.scheduler.worker_lost(worker)
            if requeued:
                log.warning("worker %s registered again: %d leases of its last run requeued", worker, requeued)
        return self.seen(worker, role, version, address)

    def weight_sources(self, worker: str) -> list[str]:
        """Where rollout `worker` fetches the current version: its relay ancestors, then the trainer
        (controller/relay.py); just `weights_uri` when that is a file on a shared volume or the base model.
        """
        if not self.weights_uri.startswith("http"):
            return [self.weights_uri]

        def address_of(name: str) -> str | None:
            peer = self.peers.get(name)
            return peer.address if peer is not None and peer.role == "rollout" and peer.address else None

        return self.relay.sources(worker, self.scheduler.version, self.weights_uri, address_of)

    def alive(self, role: str) -> int:
        return sum(1 for p in self.peers.values() if p.role == role)

    def lost(self, worker: str) -> int:
        """The supervisor saw the worker's pod or process go: requeue its leases now, without waiting for
        missed heartbeats.
        """
        self.peers.pop(worker, None)
        if self.evaluator is not None:
            self.evaluator.release_worker(worker)
        return self.scheduler.worker_lost(worker)

    def reap(self) -> list[str]:
        """Declare workers dead after missed heartbeats; their leases return to the queue."""
        limit = self.cfg.fault.heartbeatSeconds * self.cfg.fault.missedHeartbeats
        now = self.clock()
        dead = [w for w, p in self.peers.items() if now - p.last_seen > limit]
        for worker in dead:
            returned = self.scheduler.worker_lost(worker)
            if self.evaluator is not None:
                returned += self.evaluator.release_worker(worker)
            log.warning("worker %s missed its heartbeats; %d leases requeued", worker, returned)
            del self.peers[worker]
        return dead

    # --- rollouts --------------------------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        return self.scheduler.version >= self.cfg.algorithm.steps

    @property
    def complete(self) -> bool:
        """Every step trained and the last policy version evaluated (when spec.eval asks for it)."""
        e = self.evaluator
        return self.trained and (e is None or not (e.busy or e.due(self.scheduler.version)))

    def lease(self, worker: str, max_rollouts: int) -> list[dict[str, Any]]:
        """Eval chunks first (a round is short and measures the version being served), then rollout chunks."""
        now = self.clock()
        state = self.scheduler.workers.get(worker)
        chunks = (
            []
            if self.evaluator is None or (state is not None and state.draining)
            else self.evaluator.lease(worker, max_rollouts, self.scheduler.version, now)
        )
        if self.trained or len(chunks) >= max_rollouts:
            return chunks
        return chunks + [c.to_json() for c in self.scheduler.lease(worker, max_rollouts - len(chunks), now)]

    def accept(
        self, worker: str, results: list[dict[str, Any]], seconds: float
    ) -> tuple[list[str], list[str], list[dict[str, str]]]:
        """Apply chunk results one by one: (accepted lease ids, stale lease ids, invalid results as
        {leaseId, error}). An invalid result costs only its own chunk (counted as a failure of it, see
        Scheduler.fail); the others are applied. Finished rollouts get scored.
        """
        accepted: list[str] = []
        rejected: list[str] = []
        invalid: list[dict[str, str]] = []
        tokens = 0
        for result in results:
            if result["leaseId"].startswith("e"):  # an eval chunk: scored, never trained on
                item = self._accept_eval(worker, result)
                (accepted if item else rejected).append(result["leaseId"])
                tokens += len(result["tokenIds"]) if item else 0
                continue
            try:
                rollout = self.scheduler.complete(
                    worker,
                    result["leaseId"],
                    result["tokenIds"],
                    result["logprobs"],
                    result["finishReason"],
                    result["version"],
                )
            except ValueError as error:  # Scheduler.complete checks before it changes anything
                self.fail_chunk(worker, result["leaseId"], f"invalid result: {error}")
                invalid.append({"leaseId": result["leaseId"], "error": str(error)})
                continue
            if rollout is None:
                rejected.append(result["leaseId"])
                continue
            accepted.append(result["leaseId"])
            tokens += len(result["tokenIds"])
            if rollout.finished:
                self._score(rollout)
        self.scheduler.record_throughput(worker, tokens, seconds)
        return accepted, rejected, invalid

    def drain(self, worker: str) -> int:
        """Stop leasing to `worker` (rollout and eval chunks); returns the leases it still holds (0: it may stop)."""
        held = self.scheduler.drain(worker)
        return held + (0 if self.evaluator is None else self.evaluator.held_by(worker))

    def release_chunk(self, worker: str, lease_id: str) -> bool:
        """A worker hands a chunk back unfinished (it drains): it returns to its queue."""
        if lease_id.startswith("e"):
            return self.evaluator is not None and self.evaluator.release(worker, lease_id)
        return self.scheduler.release(worker, lease_id)

    def fail_chunk(self, worker: str, lease_id: str, reason: str) -> bool:
        """A chunk failed alone (Scheduler.fail); a dropped prompt is logged with its reason."""
        if lease_id.startswith("e"):
            return self.evaluator is not None and self.evaluator.fail(worker, lease_id, reason)
        dropped = len(self.scheduler.failed)
        known = self.scheduler.fail(worker, lease_id, reason)
        if len(self.scheduler.failed) > dropped:
            index, why = next(reversed(self.scheduler.failed.items()))
            log.warning("prompt %d dropped: its chunk failed %d times (%s)", index, MAX_CHUNK_FAILURES, why)
        return known

    def _score(self, rollout: Rollout) -> None:
        group = self.scheduler.groups[rollout.group]
        item = self._reward_input(group.prompt_index, rollout.output_ids, group.answer, self.prompts)

        async def run() -> None:
            scored = await self.rewards.score(item)
            self.metrics.reward.observe(scored.value)
            self.metrics.versions_spanned.observe(len({piece[2] for piece in rollout.pieces}) or 1)
            self.scheduler.rewarded(rollout.id, scored.value, scored.parts)

        task = asyncio.get_running_loop().create_task(run())
        self._pending_rewards.add(task)
        task.add_done_callback(self._pending_rewards.discard)

    def _accept_eval(self, worker: str, result: dict[str, Any]) -> bool:
        evaluator = self.evaluator
        item = None if evaluator is None else evaluator.complete(worker, result["leaseId"], result["version"])
        if item is None or evaluator is None:
            return False
        answer, index = evaluator.prompts[item.prompt][1], evaluator.indices[item.prompt]
        reward_input = self._reward_input(index, result["tokenIds"], answer, evaluator.prompt_set)
        item.tokens = len(result["tokenIds"])

        async def run() -> None:
            scored = await self.rewards.score(reward_input)
            evaluator.scored(item, scored.value)

        task = asyncio.get_running_loop().create_task(run())
        self._pending_rewards.add(task)
        task.add_done_callback(self._pending_rewards.discard)
        return True

    def _reward_input(self, index: int, output_ids: Sequence[int], answer: str, prompts: PromptSet) -> RewardInput:
        prompt, _ = prompts.example(index)
        return RewardInput(prompt, self.tokenizer.decode(list(output_ids)), answer, prompts.row(index))

    def _eval_done(self, summary: dict[str, Any]) -> None:
        self.last_eval = summary
        self.reporters.write_eval(summary)

    def pool_tokens_per_second(self) -> float:
        return sum(s.tokens_per_second or 0.0 for s in self.scheduler.workers.values())

    def desired_replicas(self) -> int:
        scale = self.cfg.scale
        return self.scheduler.desired_replicas(
            scale.targetStepSeconds, scale.rolloutMinReplicas, scale.rolloutMaxReplicas, max(self.alive("rollout"), 1)
        )

    def demand(self) -> dict[str, Any]:
        s = self.scheduler
        return {
            "tokenBudget": s.cfg.token_budget,
            "tokensThisStep": s.budget_used,
            "budgetFill": s.budget_fill(),
            "inFlight": s.in_flight_count(),
            "rolloutReplicas": self.alive("rollout"),
            "perReplicaTokensPerSecond": {w: st.tokens_per_second for w, st in sorted(s.workers.items())},
            "desiredRolloutReplicas": self.desired_replicas(),
            "targetStepSeconds": self.cfg.scale.targetStepSeconds,
        }

    # --- trainers --------------------------------------------------------------------------------------

    def tick(self) -> Batch | None:
        """Periodic work: expire leases, reap dead workers, close the step when ready."""
        self.scheduler.expire(self.clock())
        self.reap()
        if self.evaluator is not None:
            self.evaluator.expire(self.clock())
            if self.evaluator.due(self.scheduler.version) and not self.scheduler.awaiting_weights:
                self.evaluator.start(self.scheduler.version, self.clock())
        if self.trained or not self.scheduler.step_ready():
            return None
        batch = self.scheduler.close_step()
        now = self.clock()
        self.metrics.observe_phase("rollout_wait", now - self._step_started)
        purged = self.scheduler.counters.rollouts_purged
        entry = rollout_stats(batch, purged - self._purged_recorded, now - self._step_started)
        self._purged_recorded = purged
        self.last_reward_mean = entry["rewardMean"]
        self.zero_advantage_groups += entry["zeroAdvantageGroups"]
        self.replay[batch.step] = batch
        self.samples.add(pick(batch.step + 1, batch.groups, self.tokenizer))
        self.history.append(entry)
        del self.history[:-10000]
        return batch

    def batch(self, step: int) -> Batch | None:
        """The batch of `step` if it is closed (or kept for replay); None while it is still being generated."""
        return self.replay.get(step)

    def trainer_resume_step(self, trainer_step: int) -> int:
        """The step a (re)starting trainer gang that holds a checkpoint of `trainer_step` must resume from; never
        later than `trainer_step`. The controller keeps its own step when it can serve every batch from there
        (the replay log); otherwise it rewinds to its newest checkpoint at or below `trainer_step`, or starts over
        from step 0 when it has none (a gang whose checkpoints were lost with its pods: no checkpoint volume).
        """
        s = self.scheduler
        if trainer_step >= s.step or all(step in self.replay for step in range(trainer_step, s.step)):
            return min(trainer_step, s.step)
        rewound = self._restore(max_step=trainer_step)
        if rewound is None:
            log.warning(
                "the trainer gang resumes at step %d and no controller checkpoint is that old: starting over from "
                "step 0 (steps 1-%d are trained again)",
                trainer_step,
                s.step,
            )
            rewound = Scheduler(self.sched_cfg, self.prompts)
            self.weights_uri, self.history = "", []
        else:
            log.warning("the trainer gang resumes at step %d: rewound from step %d", rewound.step, s.step)
        self.scheduler = rewound
        self.replay.clear()
        self._purged_recorded = rewound.counters.rollouts_purged
        return rewound.step

    def trainer_behind(self, step: int) -> bool:
        """True when a trainer asks for a batch beyond the controller's step: the controller went back (it was
        restored from an older checkpoint) and that batch will never come; the gang must restart with it.
        """
        return step > self.scheduler.step

    def published(
        self,
        version: int,
        weights_uri: str,
        checkpointed: bool,
        train_seconds: float,
        stats: dict[str, float] | None = None,
    ) -> str:
        """Record the trainers' new weights; returns `"advanced"` when this opens the next step, `"replayed"`
        for a step a restarted gang re-trained from the replay log (the same lineage: nothing changes here).
        """
        s = self.scheduler
        if not (s.awaiting_weights and version == s.step):
            if version <= s.version or (s.awaiting_weights and version < s.step):
                return "replayed"
            raise ValueError(f"version: expected {s.step if s.awaiting_weights else s.version}, got {version}")
        now = self.clock()
        if train_seconds:
            self.metrics.observe_phase("train", train_seconds)
        self.weights_uri = weights_uri
        if self.history and self.history[-1]["step"] == version:
            self.history[-1].update(trainSeconds=train_seconds, wallPublished=time.time(), **(stats or {}))
            self.reporters.write(self.history[-1])
        self.scheduler.weights_published(version)
        self._published_at = now
        self._step_started = now
        if checkpointed:  # the gang can only fall back to this checkpoint now: older batches need no replay
            self.replay.clear()
            self.write_checkpoint()
        return "advanced"

    def note_version(self, worker: str, version: int) -> None:
        """A rollout worker reports the version it serves: the weight sync is done when all serve the newest."""
        self.seen(worker, "rollout", version)
        if self._published_at is not None and all(
            p.version >= self.scheduler.version for p in self.peers.values() if p.role == "rollout"
        ):
            self.metrics.observe_phase("weight_sync", self.clock() - self._published_at)
            self._published_at = None

    def waiting_for(self) -> tuple[str, str]:
        """What the current step waits for (`weights`: the trainer gang's next version; `rolloutWorkers`: no rollout
        worker connected; `rollouts`: the batch is being generated; "" once complete) and since when (UTC, ISO 8601).
        """
        s = self.scheduler
        kind = (
            ""
            if self.complete
            else "weights"
            if s.awaiting_weights
            else "rolloutWorkers"
            if self.alive("rollout") == 0
            else "rollouts"
        )
        if self._waiting[:2] != (kind, s.step):
            since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._waiting = (kind, s.step, since)
        return kind, self._waiting[2]

    def status(self) -> dict[str, Any]:
        s = self.scheduler
        waiting, since = self.waiting_for()
        return {
            "waitingFor": waiting,
            "waitingSince": since,
            "step": s.step,
            "policyVersion": s.version,
            "steps": self.cfg.algorithm.steps,
            "complete": self.complete,
            "budgetFill": s.budget_fill(),
            "tokensPerSecond": self.pool_tokens_per_second(),
            "retention": s.retention,
            "tokensPurged": s.counters.tokens_purged,
            "lastCheckpoint": self.last_checkpoint,
            "latestModel": self.weights_uri,
            "rewardMean": self.last_reward_mean,
            "workers": {w: {"role": p.role, "version": p.version} for w, p in sorted(self.peers.items())},
            "doneLog": len(s.done),
            "eval": self.last_eval,
        }

    async def aclose(self) -> None:
        self.reporters.close()
        for task in list(self._pending_rewards):
            task.cancel()
        await self.rewards.close()
