"""The weight relay: the controller's fan-out tree of engines, and engines streaming a version on while it arrives."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest
from aiohttp import web

from kuberl_workers.controller.relay import RelayTree
from kuberl_workers.controller.service import Controller
from kuberl_workers.rollout.relay import Relay
from kuberl_workers.tokenizer import ByteTokenizer
from support.jobs import job_config

TRAINER = "http://trainer:8002/weights/3"


def _tree() -> RelayTree:
    return RelayTree(relay_url=lambda address, version: f"http://{address}/weights/{version}")


def test_the_trainer_serves_fanout_engines_and_each_engine_fanout_more() -> None:
    tree, alive = _tree(), {f"w{i}": f"10.0.0.{i}" for i in range(8)}
    got = {w: tree.sources(w, 3, TRAINER, alive.get) for w in alive}  # in the order they ask
    assert got["w0"] == got["w1"] == [TRAINER]
    assert got["w2"] == got["w3"] == ["http://10.0.0.0/weights/3", TRAINER]
    assert got["w4"] == got["w5"] == ["http://10.0.0.1/weights/3", TRAINER]
    assert got["w6"] == ["http://10.0.0.2/weights/3", "http://10.0.0.0/weights/3", TRAINER]  # nearest first
    served = [s[0] for s in got.values() if s[0] != TRAINER]
    assert max(served.count(u) for u in served) == 2 and [s[0] for s in got.values()].count(TRAINER) == 2
    # an engine that went away is skipped; the place of one asking again does not move
    del alive["w2"]
    assert tree.sources("w6", 3, TRAINER, alive.get) == ["http://10.0.0.0/weights/3", TRAINER]
    # a new version is a new tree; versions older than the previous one are forgotten
    assert tree.sources("w6", 4, TRAINER, alive.get) == [TRAINER]
    tree.sources("w6", 5, TRAINER, alive.get)
    assert sorted(tree.order) == [4, 5]


def test_the_controller_names_relay_sources_only_for_weights_served_over_http(tmp_path: Path) -> None:
    controller = Controller(job_config(tmp_path / "ckpt"), tokenizer=ByteTokenizer())
    for i in range(3):
        controller.registered(f"r{i}", "rollout", 0, f"10.1.0.{i}")
    controller.weights_uri = "file:///ckpt/weights-00000001"  # a shared volume: everyone reads the file
    assert controller.weight_sources("r2") == ["file:///ckpt/weights-00000001"]
    controller.weights_uri = "http://10.9.0.1:8002/weights/0"
    sources = {f"r{i}": controller.weight_sources(f"r{i}") for i in range(3)}
    port = controller.cfg.ports.rollout
    assert sources["r2"] == [f"http://10.1.0.0:{port}/weights/0", "http://10.9.0.1:8002/weights/0"]


async def _file_server(payload: bytes, pace: float, served: list[int]) -> tuple[web.AppRunner, str]:
    """Trainer rank 0's weight server, slowed down so that relays start before it finishes."""

    async def weights(request: web.Request) -> web.StreamResponse:
        served.append(1)
        response = web.StreamResponse()
        response.content_length = len(payload)
        await response.prepare(request)
        for start in range(0, len(payload), 1 << 18):
            await response.write(payload[start : start + (1 << 18)])
            await asyncio.sleep(pace)
        return response

    return await _app({"/weights/{version}": weights})


async def _app(routes: dict[str, object]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_a_chain_of_engines_streams_a_version_on_while_it_arrives(tmp_path: Path) -> None:
    """trainer -> e0 -> e1 -> e2 -> e3 at once: every copy equals the published file, the trainer sent it once,
    and the last engine finished long before four transfers one after another would have."""
    payload = os.urandom(4 << 20)
    served: list[int] = []

    async def go() -> list[bytes]:
        trainer, trainer_url = await _file_server(payload, pace=0.05, served=served)
        relays = [Relay(tmp_path / f"e{i}") for i in range(4)]
        apps = [await _app({"/weights/{version}": relay.serve}) for relay in relays]
        sources = [[f"{trainer_url}/weights/7"]] + [
            [f"{apps[i - 1][1]}/weights/7", f"{trainer_url}/weights/7"] for i in range(1, 4)
        ]
        try:
            began = asyncio.get_running_loop().time()
            results = await asyncio.gather(
                *(relays[i].fetch(7, sources[i], {}) for i in reversed(range(4)))
            )  # the deepest asks first: its parent's fetch has not begun yet, it waits for it
            elapsed = asyncio.get_running_loop().time() - began
            results = results[::-1]
            assert [used for _, used in results] == [s[0] for s in sources]  # every engine got it from above
            assert elapsed < 3 * 16 * 0.05, elapsed  # one paced transfer is 16 x 0.05 s; four in a row 3.2 s
            assert relays[0].served_bytes == relays[2].served_bytes == len(payload)
            return [path.read_bytes() for path, _ in results]
        finally:
            for runner in [trainer, *(app for app, _ in apps)]:
                await runner.cleanup()

    copies = asyncio.run(go())
    assert served == [1]  # the trainer sent the model once, not once per engine
    assert {hashlib.sha256(c).hexdigest() for c in copies} == {hashlib.sha256(payload).hexdigest()}


def test_an_engine_whose_parent_is_gone_or_breaks_off_falls_back_to_the_trainer(tmp_path: Path) -> None:
    payload = os.urandom(1 << 20)

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[:1000])
        raise ConnectionResetError("the parent engine died")

    async def go() -> tuple[Path, str, Path, str]:
        trainer, trainer_url = await _file_server(payload, pace=0.0, served=[])
        parent, parent_url = await _app({"/weights/{version}": broken})
        try:
            relay = Relay(tmp_path / "child")
            gone = await relay.fetch(2, ["http://127.0.0.1:9/weights/2", f"{trainer_url}/weights/2"], {})
            cut = await relay.fetch(3, [f"{parent_url}/weights/3", f"{trainer_url}/weights/3"], {})
            with pytest.raises(OSError, match="every source failed"):
                await relay.fetch(4, [f"{parent_url}/weights/4"], {})
            assert sorted(relay.versions) == [3]  # the newest whole version is kept, older ones deleted
            return (*gone, *cut)
        finally:
            for runner in (trainer, parent):
                await runner.cleanup()

    gone_path, gone_source, cut_path, cut_source = asyncio.run(go())
    assert gone_source.endswith("/weights/2") and "127.0.0.1:9" not in gone_source
    assert cut_source.endswith("/weights/3") and cut_path.read_bytes() == payload
    assert not gone_path.exists()


def test_an_engine_source_that_broke_off_once_is_tried_again_before_the_trainer(tmp_path: Path) -> None:
    """A parent whose own upstream failed fetches again and serves the new copy: its children re-attach to it
    (they try an engine source twice) instead of the whole subtree falling back to rank 0."""
    payload = os.urandom(1 << 20)
    calls: list[int] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        response = web.StreamResponse()
        response.content_length = len(payload)
        await response.prepare(request)
        if len(calls) == 1:
            await response.write(payload[:1000])
            raise ConnectionResetError("the parent's upstream broke off")
        await response.write(payload)
        return response

    async def go() -> tuple[Path, str]:
        parent, parent_url = await _app({"/weights/{version}": flaky})
        try:
            return await Relay(tmp_path / "child").fetch(
                5, [f"{parent_url}/weights/5", "http://127.0.0.1:9/weights/5"], {}
            )
        finally:
            await parent.cleanup()

    path, source = asyncio.run(go())
    assert "127.0.0.1:9" not in source and path.read_bytes() == payload and len(calls) == 2


def test_a_cancelled_fetch_stops_its_download_at_once(tmp_path: Path) -> None:
    """The download runs in a thread blocked in recv: cancelling the fetch (the engine stops) must not wait for the
    transfer or its stall limit; the half-arrived version is marked failed for the engines below."""
    served, release = asyncio.Event(), asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100 << 20
        await response.prepare(request)
        await response.write(b"x" * 1000)
        served.set()
        await release.wait()  # then nothing: a parent that hangs (until the test ends)
        return response

    async def go() -> tuple[bool, float]:
        parent, parent_url = await _app({"/weights/{version}": trickle})
        relay = Relay(tmp_path / "child")
        try:
            task = asyncio.create_task(relay.fetch(1, [f"{parent_url}/weights/1"], {}))
            await asyncio.wait_for(served.wait(), 10)
            began = asyncio.get_running_loop().time()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return relay.versions[1].failed, asyncio.get_running_loop().time() - began
        finally:
            release.set()
            await parent.cleanup()

    began = time.monotonic()
    failed, cancel_seconds = asyncio.run(go())  # asyncio.run waits for the download thread to end
    assert failed and cancel_seconds < 2.0
    assert time.monotonic() - began < 15, "the download thread outlived the cancel"
