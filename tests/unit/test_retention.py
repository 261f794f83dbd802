"""Automatic C3PO++ retention (c3po.retention unset): sigma follows what a purge would waste, within bounds."""

from __future__ import annotations

import json
import random

import pytest

from kuberl_workers.controller.retention import WINDOW, AutoRetention
from kuberl_workers.controller.scheduler import Scheduler
from support.sim import config, drive, lengths_long_tail, source


def test_sigma_rises_until_the_purge_fits_the_share_and_never_past_the_bound() -> None:
    auto = AutoRetention(max_share=0.05, max_sigma=5)
    # purging at sigma s discards 100 / s tokens of 1000 generated: sigma 2 allows 50 tokens, needs 50 > 50? no
    assert auto.choose(1000, lambda s: 100 // s) == 2
    # everything old: even the bound purges too much, and the bound holds
    assert auto.choose(1000, lambda s: 1000 if s < 9 else 0) == 5
    assert auto.sigma == 5


def test_the_window_remembers_earlier_purges() -> None:
    auto = AutoRetention(max_share=0.1, max_sigma=8)
    assert auto.choose(1000, lambda s: 90 if s < 2 else 0) == 1  # 90 of 1000: within the share
    # another 90 would make 180 of 2000 (9%): still within; a third 90 of 3000 too; the window holds WINDOW steps
    assert auto.choose(1000, lambda s: 90 if s < 2 else 0) == 1
    assert auto.choose(500, lambda s: 90 if s < 2 else 0) == 2  # 270 of 2500 > 10%: sigma rises


def test_sigma_falls_after_quiet_publishes_and_state_round_trips() -> None:
    auto = AutoRetention(max_share=0.05, max_sigma=8, sigma=4)
    for _ in range(WINDOW - 1):
        assert auto.choose(1000, lambda s: 0) == 4
    restored = AutoRetention(0.05, 8)
    restored.restore(json.loads(json.dumps(auto.state())))
    assert restored.choose(1000, lambda s: 0) == 4 and restored.sigma == 3  # the WINDOW-th quiet publish
    # a publish at which sigma - 1 would have purged something resets the count
    busy = AutoRetention(0.5, 8, sigma=4)
    for _ in range(2 * WINDOW):
        busy.choose(1000, lambda s: 10 if s < 4 else 0)
    assert busy.sigma == 4


def test_choose_asks_about_no_sigma_below_one_under_its_own() -> None:
    """The scheduler counts the tokens of only the groups a purge at max(1, sigma - 1) or above would discard."""
    rng = random.Random(7)
    auto = AutoRetention(max_share=0.05, max_sigma=8)
    for _ in range(300):
        lowest, asked = max(1, auto.sigma - 1), list[int]()
        cut = rng.choice([0, 0, 1, 2, 3, 5, 9])
        tokens = rng.choice([0, 10, 100, 1000])

        def purged_at(sigma: int, asked: list[int] = asked, cut: int = cut, tokens: int = tokens) -> int:
            asked.append(sigma)
            return tokens if sigma < cut else 0

        auto.choose(rng.choice([100, 1000, 5000]), purged_at)
        assert asked and min(asked) >= lowest, (asked, lowest)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_share"):
        AutoRetention(1.5, 8)


def test_the_scheduler_with_automatic_retention_wastes_less_than_a_fixed_sigma_of_one() -> None:
    """The bench's finding in miniature: on a long tail, sigma=1 purges groups every step; automatic retention
    raises sigma until purges fit the share (0.05, the default), and keeps trained tokens within max_retention."""
    lengths = lengths_long_tail(seed=7, max_new=40)

    def waste(retention: int | None) -> tuple[float, Scheduler, list[int]]:
        cfg = config(retention=retention, token_budget=24, pool_capacity=16, prompts_per_step=4, max_retention=16)
        sched = Scheduler(cfg, source)
        run = drive(sched, lengths, steps=30)
        oldest = [b.step - min(r["versions"]) for b in run.batches for g in b.groups for r in g["rollouts"]]
        return sched.counters.tokens_purged / sched.counters.tokens_generated, sched, oldest

    fixed, _, _ = waste(1)
    auto, sched, oldest = waste(None)
    assert fixed > 0.1, fixed  # the long tail: sigma=1 throws away a good share
    # every publish keeps the last WINDOW steps' purges within the share, so the whole run does too (the budget
    # here is a third of the longest completion: sigma must grow large, and the bound is not reached)
    assert auto <= 0.05 + 1e-9, (auto, fixed)
    assert 1 < sched.retention <= 16 and max(oldest) <= 16
    assert sched.state()["autoRetention"]["sigma"] == sched.retention
    restored = Scheduler.restore(sched.cfg, source, json.loads(json.dumps(sched.state())))
    assert restored.retention == sched.retention and restored.generated_at_publish == sched.generated_at_publish
