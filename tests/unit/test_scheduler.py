"""C3PO++ scheduling and work leases on the real Scheduler, driven by a scripted engine."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuberl_workers.controller.scheduler import MAX_CHUNK_FAILURES, Scheduler
from kuberl_workers.controller.state import ChunkRequest
from support.sim import ScriptedEngine, config, drive, lengths_long_tail, reward_of, source

LENGTHS = lengths_long_tail(seed=7, max_new=40)


def expected_tokens(prompt_index: int, sample: int) -> list[int]:
    return [prompt_index * 100 + i for i in range(LENGTHS[prompt_index, sample])]


def synchronous_reference(steps: int, prompts: int, group: int, chunk: int) -> tuple[list[list[int]], int]:
    """The plain synchronous loop: each step generates `prompts` fresh groups to completion, then trains."""
    batches, chunks = [], 0
    for step in range(steps):
        indices = list(range(step * prompts, (step + 1) * prompts))
        batches.append(indices)
        chunks += sum(math.ceil(LENGTHS[p, s] / chunk) for p in indices for s in range(group))
    return batches, chunks


@pytest.mark.parametrize("budget", [1, 10**9])
def test_sigma_zero_reproduces_the_synchronous_schedule(budget: int) -> None:
    cfg = config(retention=0, token_budget=budget, pool_capacity=16, prompts_per_step=4, group_size=4)
    run = drive(Scheduler(cfg, source), LENGTHS, steps=5)
    ref_batches, ref_chunks = synchronous_reference(5, prompts=4, group=4, chunk=cfg.chunk_tokens)
    assert [[g["promptIndex"] for g in b.groups] for b in run.batches] == ref_batches
    assert run.chunk_calls == ref_chunks
    for batch in run.batches:
        for group in batch.groups:
            for sample, rollout in enumerate(group["rollouts"]):
                assert rollout["outputIds"] == expected_tokens(group["promptIndex"], sample)
                assert set(rollout["versions"]) == {batch.step}  # nothing carried over


def test_partial_rollouts_carry_over_with_per_token_versions() -> None:
    cfg = config(retention=3, token_budget=24, pool_capacity=16, prompts_per_step=4)
    run = drive(Scheduler(cfg, source), LENGTHS, steps=12)
    spanning = 0
    for batch in run.batches:
        for group in batch.groups:
            for sample, rollout in enumerate(group["rollouts"]):
                # continued rollouts keep their earlier tokens: the scripted sequence is intact
                assert rollout["outputIds"] == expected_tokens(group["promptIndex"], sample)
                assert len(rollout["logprobs"]) == len(rollout["versions"]) == len(rollout["outputIds"])
                assert rollout["versions"] == sorted(rollout["versions"])
                assert max(rollout["versions"]) <= batch.step
                assert len(set(rollout["versions"])) <= (cfg.retention or 0) + 1
                spanning += len(set(rollout["versions"])) > 1
    assert spanning >= 5, "the long tail should make rollouts span policy versions"


def test_retention_purges_and_requeues_once() -> None:
    lengths = {key: 2 for key in LENGTHS}
    for sample in range(4):
        lengths[1, sample] = 40  # prompt 1 needs 10 chunks per sample; the others need one
    cfg = config(retention=1, token_budget=8, pool_capacity=8, prompts_per_step=2, chunk_tokens=4)
    sched = Scheduler(cfg, source)
    run = drive(sched, lengths, steps=12, per_lease=3)
    assert sched.counters.rollouts_purged >= 4
    assert sched.counters.prompts_requeued >= 1
    trained = [p for p, _ in sched.done]
    assert len(trained) == len(set(trained))
    assert 1 not in trained and 1 in sched.dropped  # purged, requeued once, purged again: dropped
    for batch in run.batches:
        for group in batch.groups:
            for rollout in group["rollouts"]:
                assert batch.step - min(rollout["versions"]) <= cfg.retention


def test_inference_pool_capacity_respected() -> None:
    cfg = config(retention=2, token_budget=30, pool_capacity=12, prompts_per_step=8, group_size=4)
    sched = Scheduler(cfg, source)
    peak = 0
    original = sched.refill

    def checked() -> None:
        nonlocal peak
        original()
        peak = max(peak, len(sched.in_flight()))
        assert len(sched.in_flight()) <= cfg.pool_capacity

    sched.refill = checked  # type: ignore[method-assign]
    drive(sched, LENGTHS, steps=8)
    assert peak == cfg.pool_capacity


def test_budget_accounting_and_close_rule() -> None:
    cfg = config(
        retention=1,
        token_budget=10,
        pool_capacity=4,
        prompts_per_step=1,
        group_size=2,
        chunk_tokens=8,
        max_new_tokens=8,
    )
    sched = Scheduler(cfg, source)
    a, b = sched.lease("w", 10, now=0.0)
    done_a = sched.complete("w", a.lease_id, [1, 2, 3], [-0.1] * 3, "stop", 0)
    assert done_a is not None and sched.budget_used == 3 and sched.budget_fill() == pytest.approx(0.3)
    sched.rewarded(done_a.id, 1.0)
    assert not sched.step_ready()  # group incomplete
    done_b = sched.complete("w", b.lease_id, [4] * 8, [-0.2] * 8, None, 0)  # hits maxNewTokens
    assert done_b is not None and done_b.finish_reason == "length" and sched.budget_used == 11
    assert not sched.step_ready()  # not rewarded yet
    sched.rewarded(done_b.id, 0.0)
    assert sched.step_ready()
    batch = sched.close_step()
    assert batch.tokens == 11 and sched.done == [(0, 0)] and sched.budget_used == 0
    assert sched.lease("w", 10, now=1.0) == []  # paused until the next version is published
    sched.weights_published(1)
    assert {c.version for c in sched.lease("w", 10, now=2.0)} == {1}


def test_bad_chunk_results_refused() -> None:
    sched = Scheduler(config(), source)
    (chunk,) = sched.lease("w", 1, now=0.0)
    with pytest.raises(ValueError, match="logprobs"):
        sched.complete("w", chunk.lease_id, [1, 2], [-0.1], None, 0)
    with pytest.raises(ValueError, match="at most 4"):
        sched.complete("w", chunk.lease_id, [1] * 5, [-0.1] * 5, None, 0)
    with pytest.raises(ValueError, match="finishReason"):
        sched.complete("w", chunk.lease_id, [1], [-0.1], "eos!", 0)
    assert sched.complete("other", chunk.lease_id, [1], [-0.1], None, 0) is None  # not its lease
    assert sched.complete("w", "nonsense", [1], [-0.1], None, 0) is None
    assert sched.complete("w", chunk.lease_id, [1], [-0.1], None, 0) is not None


def test_leases_follow_measured_throughput() -> None:
    sched = Scheduler(config(pool_capacity=16, prompts_per_step=4), source)
    sched.record_throughput("slow", 100, 1.0)
    sched.record_throughput("fast", 300, 1.0)
    assert len(sched.lease("fast", 100, 0.0)) == 12
    assert len(sched.lease("slow", 100, 0.0)) == 4


def test_drain_stops_leasing() -> None:
    sched = Scheduler(config(), source)
    (chunk,) = sched.lease("w", 1, 0.0)
    assert sched.drain("w") == 1
    assert sched.lease("w", 5, 0.0) == []
    sched.complete("w", chunk.lease_id, [1], [-0.1], None, 0)
    assert sched.drain("w") == 0


def test_desired_replicas_from_throughput() -> None:
    sched = Scheduler(config(token_budget=1000), source)
    assert sched.desired_replicas(10.0, 1, 8, current=3) == 3  # nothing measured yet
    sched.record_throughput("a", 25, 1.0)
    assert sched.desired_replicas(10.0, 1, 8, current=1) == 4  # 1000 / (10 s * 25 tok/s)
    assert sched.desired_replicas(1.0, 1, 8, current=1) == 8  # clamped
    assert sched.desired_replicas(1000.0, 2, 8, current=1) == 2


def test_checkpoint_round_trip_mid_step_gives_the_same_future() -> None:
    cfg = config(retention=2, token_budget=30)
    original = Scheduler(cfg, source)
    drive(original, LENGTHS, steps=3)
    # mid-step: lease and complete a few chunks so partial rollouts exist
    for chunk in original.lease("w0", 5, 100.0):
        original.complete("w0", chunk.lease_id, [0], [-1.0], None, chunk.version)
    (held,) = original.lease("w1", 1, 101.0)  # a lease in flight at checkpoint time
    state = json.loads(json.dumps(original.state()))
    restored = Scheduler.restore(cfg, source, state)
    assert any(r.output_ids and not r.finished for r in restored.rollouts.values())
    assert all(r.lease is None for r in restored.rollouts.values())  # the held lease returned to TODO
    original.release("w1", held.lease_id)
    original.forget_workers()  # worker throughput is re-measured after a restart, not checkpointed
    future_a = drive(original, LENGTHS, steps=4)
    future_b = drive(restored, LENGTHS, steps=4)
    assert [b.groups for b in future_a.batches] == [b.groups for b in future_b.batches]
    assert original.done == restored.done


# --- the data-level invariant under random faults ----------------------------------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["lease", "complete", "complete_late", "kill", "stall", "release", "fail", "publish"]),
        st.integers(0, 2),  # worker
        st.integers(1, 6),  # how many chunks / seconds
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=120, deadline=None)
@given(actions=ACTIONS, retention=st.integers(0, 2))
def test_no_prompt_lost_or_trained_twice(actions: list[tuple[str, int, int]], retention: int) -> None:
    cfg = config(retention=retention, token_budget=20, pool_capacity=12, prompts_per_step=3, group_size=3)
    sched = Scheduler(cfg, source)
    engine = ScriptedEngine(LENGTHS, sched)
    held: dict[str, list[ChunkRequest]] = {f"w{i}": [] for i in range(3)}
    now = 0.0
    batches = []
    for action, w, n in actions:
        worker = f"w{w}"
        now += 1.0
        if action == "lease":
            held[worker] += sched.lease(worker, n, now)
        elif action in ("complete", "complete_late") and held[worker]:
            if action == "complete_late":
                now += cfg.lease_seconds  # the worker stalled past its lease
                sched.expire(now)
            chunk = held[worker].pop(0)
            if chunk.rollout_id in sched.rollouts:  # not purged meanwhile
                tokens, finish = engine.generate(chunk.rollout_id, chunk.output_len, chunk.max_tokens)
                done = sched.complete(worker, chunk.lease_id, tokens, [-0.3] * len(tokens), finish, chunk.version)
                if done is not None and done.finished:
                    sched.rewarded(done.id, reward_of(done.output_ids))
        elif action == "kill":
            sched.worker_lost(worker)
            held[worker] = []
        elif action == "stall":
            now += n * cfg.lease_seconds / 3
            sched.expire(now)
        elif action == "release" and held[worker]:
            sched.release(worker, held[worker].pop(0).lease_id)
        elif action == "fail" and held[worker]:
            sched.fail(worker, held[worker].pop(0).lease_id, "engine refused it")
        elif action == "publish" and sched.awaiting_weights:
            # weights arrive some actions after the close: chunks leased before it may complete meanwhile
            sched.weights_published(sched.step)
        elif action == "complete" and not held[worker]:
            sched.record_throughput(worker, n * 7, 0.5 * n)
        elif action == "release" and not held[worker]:
            sched.drain(worker)
        if sched.step_ready():
            batches.append(sched.close_step())
        sched.check_indexes()  # the O(log n) indexes agree with a scan of the pool after every event
    # then a healthy worker finishes the job's next steps
    for worker in held:
        sched.worker_lost(worker)
    if sched.awaiting_weights:
        sched.weights_published(sched.step)
    run = drive(sched, LENGTHS, steps=2, workers=1)
    for batch in batches + run.batches:  # no trained token older than sigma versions
        for group in batch.groups:
            for rollout in group["rollouts"]:
                assert batch.step - min(rollout["versions"]) <= retention, (batch.step, rollout["versions"])
    trained = [p for p, _ in sched.done]
    assert len(trained) == len(set(trained)), "a prompt was trained twice"
    in_flight = {g.prompt_index for g in sched.groups.values()} | set(sched.requeue)
    for index in range(sched.cursor):
        assert index in trained or index in in_flight or index in sched.dropped, f"prompt {index} lost"
    for batch in run.batches:
        for group in batch.groups:
            for sample, rollout in enumerate(group["rollouts"]):
                assert rollout["outputIds"] == expected_tokens(group["promptIndex"], sample)


# --- the audit's instances (#15 kind 6) --------------------------------------------------------------------


def _finish(sched: Scheduler, chunk: ChunkRequest, worker: str, n: int, stop: bool) -> None:
    done = sched.complete(worker, chunk.lease_id, [5] * n, [-0.1] * n, "stop" if stop else None, chunk.version)
    if done is not None and done.finished:
        sched.rewarded(done.id, float(done.id % 2))


def test_a_rollout_finished_before_a_delayed_publish_is_not_trained_past_sigma() -> None:
    """sigma=1, Phi=5, Omega=4, G=2, chunk 4: prompt 1's rollouts got v0 tokens, then v1 tokens in a chunk leased
    before step 1 closed and completed before v2 was published; step 2 trained them with versions
    [0,0,0,0,1,1] (lag 2 > sigma). Right: purged (and requeued) at the publish of v2."""
    cfg = config(retention=1, token_budget=5, pool_capacity=4, group_size=2, chunk_tokens=4, prompts_per_step=2)
    sched = Scheduler(cfg, source)
    r1, r2, r3, r4 = sched.lease("w", 4, 0.0)  # prompts 0 and 1 at v0
    _finish(sched, r1, "w", 3, True)
    _finish(sched, r2, "w", 3, True)
    assert sched.step_ready()
    assert [g["promptIndex"] for g in sched.close_step().groups] == [0]
    _finish(sched, r3, "w", 4, False)  # completed while the new weights are still awaited
    _finish(sched, r4, "w", 4, False)
    sched.weights_published(1)
    step1 = sched.lease("w", 4, 1.0)  # prompt 1's two rollouts (v1) and prompt 2's group
    by_rollout = {c.rollout_id: c for c in step1}
    prompt1 = [by_rollout[r3.rollout_id], by_rollout[r4.rollout_id]]
    for chunk in step1:
        if chunk not in prompt1:
            _finish(sched, chunk, "w", 3, True)
    assert [g["promptIndex"] for g in sched.close_step().groups] == [2]
    for chunk in prompt1:  # leased before the close, completed before the publish
        _finish(sched, chunk, "w", 2, True)
    sched.weights_published(2)
    assert [g.requeued for g in sched.groups.values() if g.prompt_index == 1] == [True]  # a fresh group of it
    assert sched.counters.rollouts_purged == 2 and sched.budget_used == 0  # its tokens left C with it
    run = drive(sched, LENGTHS, steps=2, workers=1)
    for batch in run.batches:
        for group in batch.groups:
            for rollout in group["rollouts"]:
                assert batch.step - min(rollout["versions"]) <= cfg.retention


def test_no_group_is_admitted_once_the_budget_is_met() -> None:
    """Phi=4, Omega=6, sigma>0: a group admitted after C reached 4 started one version old. Right: refill only
    while C < Phi."""
    cfg = config(retention=2, token_budget=4, pool_capacity=6, group_size=2, chunk_tokens=4, prompts_per_step=3)
    sched = Scheduler(cfg, source)
    chunks = sched.lease("w", 6, 0.0)  # three groups fill the pool
    assert len(sched.groups) == 3
    _finish(sched, chunks[0], "w", 2, True)
    _finish(sched, chunks[1], "w", 2, True)  # group 0 done: C = 4 = Phi, one slot of two rollouts free
    assert sched.budget_used >= cfg.token_budget
    assert len(sched.groups) == 3, "a group was admitted after the budget was met"
    batch = sched.close_step()
    sched.weights_published(1)
    assert [g["promptIndex"] for g in batch.groups] == [0]
    assert len(sched.groups) == 3  # the next step refills


def test_a_chunk_that_always_fails_drops_only_its_group() -> None:
    """#15 kind 1: a poison chunk re-leased for ever. Right: after MAX_CHUNK_FAILURES its group is dropped with
    the reason, a fresh group takes its place, and the step trains."""
    cfg = config(retention=0, token_budget=8, pool_capacity=4, group_size=2, chunk_tokens=4, prompts_per_step=2)
    sched = Scheduler(cfg, source)
    for attempt in range(MAX_CHUNK_FAILURES):
        chunks = sched.lease("w", 4, float(attempt))
        poison = next(c for c in chunks if c.rollout_id == 1)
        assert sched.fail("w", poison.lease_id, "decoder prompt cannot be empty")
        for chunk in chunks:
            if chunk is not poison:
                sched.release("w", chunk.lease_id)
    assert sched.failed == {0: "decoder prompt cannot be empty"}
    assert 0 in sched.dropped and sched.counters.prompts_failed == 1
    assert sorted(g.prompt_index for g in sched.groups.values()) == [1, 2]  # prompt 2 took prompt 0's place
    assert not sched.fail("w", poison.lease_id, "late")  # stale
    run = drive(sched, LENGTHS, steps=1, workers=1)
    assert sorted(g["promptIndex"] for g in run.batches[0].groups) == [1, 2]
    restored = Scheduler.restore(cfg, source, json.loads(json.dumps(sched.state())))
    assert restored.failed == sched.failed


def test_a_leased_chunk_keeps_its_context_while_the_rollout_grows() -> None:
    """A chunk request refers to the rollout's own token list (no copy per lease): its context is the prefix it
    was leased with, also after later chunks of the rollout were accepted (a late re-serialisation)."""
    cfg = config(retention=2, token_budget=10**6, pool_capacity=2, group_size=2, chunk_tokens=3, prompts_per_step=1)
    sched = Scheduler(cfg, source)
    first, _ = sched.lease("w", 2, 0.0)
    _finish(sched, first, "w", 3, False)
    (second,) = [c for c in sched.lease("w", 2, 1.0) if c.rollout_id == first.rollout_id]
    before = json.dumps(second.to_json())
    _finish(sched, second, "w", 3, False)  # the rollout grows to 6 tokens
    assert second.output_ids == [5, 5, 5] and json.dumps(second.to_json()) == before
    assert first.output_ids == [] and sched.rollouts[first.rollout_id].output_ids == [5] * 6


def test_the_checkpoint_keeps_the_form_earlier_versions_read_and_restores_the_groups_ages() -> None:
    """Ages live per group now (Group.born), but the checkpoint keeps each rollout's age and no new group field, the
    form earlier versions write and read (a controller image rolled back mid-job restores it): restore derives the
    groups' ages from it, and the restored scheduler purges and trains as the original goes on to."""
    cfg = config(retention=1, token_budget=30, pool_capacity=24)
    sched = Scheduler(cfg, source)
    drive(sched, LENGTHS, steps=3)
    for chunk in sched.lease("w0", 7, 50.0):  # partial rollouts of different ages in flight
        sched.complete("w0", chunk.lease_id, [0], [-1.0], None, chunk.version)
    state = json.loads(json.dumps(sched.state()))
    assert {key for g in state["groups"] for key in g} == {"id", "prompt_index", "answer", "rollouts", "requeued"}
    assert all("age" in r for r in state["rollouts"])
    in_flight = [g for g in sched.groups.values() if sched.index.unfinished_in(g.id)]
    assert any(sched.publishes - g.born >= 1 for g in in_flight)
    restored = Scheduler.restore(cfg, source, state)
    restored.check_indexes()
    for group in in_flight:  # the age of a group with rollouts in flight is what purges it
        assert restored.publishes - restored.groups[group.id].born == sched.publishes - group.born
    for chunk in [r.lease for r in sched.rollouts.values() if r.lease is not None]:
        sched.release(chunk.worker, chunk.lease_id)  # the restored pool holds no leases either
    sched.forget_workers()
    future_a, future_b = drive(sched, LENGTHS, steps=4), drive(restored, LENGTHS, steps=4)
    assert [b.groups for b in future_a.batches] == [b.groups for b in future_b.batches]
    assert sched.counters == restored.counters and sched.counters.rollouts_purged > 0


def test_the_lease_deadline_heap_stays_bounded_by_the_live_leases() -> None:
    """One deadline entry per lease call; entries whose leases all ended are dropped once they outnumber twice
    the live leases (and 4096), so a long lease period at thousands of calls does not pile them up."""
    cfg = config(retention=2, token_budget=10**9, pool_capacity=8, group_size=2, chunk_tokens=1, prompts_per_step=10**9)
    cfg = cfg.__class__(**{**cfg.__dict__, "max_new_tokens": 10**6, "lease_seconds": 10**6})
    sched = Scheduler(cfg, source)
    for call in range(6000):
        (chunk,) = sched.lease("w", 1, float(call))
        sched.complete("w", chunk.lease_id, [1], [-0.1], None, chunk.version)
        sched.expire(float(call))  # nothing is due: only the compaction can shrink the heap
    assert len(sched.index._deadlines) <= 4097
    (held,) = sched.lease("w", 1, 6000.0)
    sched.check_indexes()
    assert sched.expire(6000.0 + 10**6) == 1 and sched.rollouts[held.rollout_id].lease is None
    # an entry holds ids and a lease number, no chunk: ended leases keep no tokens alive, and a caller that
    # consumes the list lease() returned does not take its leases out of expiry
    assert all(isinstance(i, int) for _, _, ids, first in sched.index._deadlines for i in [*ids, first])
    chunks = sched.lease("w", 4, 7000.0)
    count = len(chunks)
    chunks.clear()
    assert count > 0 and sched.expire(7000.0 + 10**6) == count
