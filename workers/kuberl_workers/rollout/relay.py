"""A rollout engine's side of the weight relay (controller/relay.py): fetch a version from the first source that
works, and serve it to the engines below while it still arrives.

A version is one `model.safetensors` file. `fetch` streams it from a source (an engine above this one, or trainer
rank 0) into a file in the relay folder as it arrives; `serve` answers `GET /weights/<version>` from that
file, sending what has arrived and waiting for more, so that a chain of engines moves the model in about the time
of one transfer. A source that fails midway (a parent engine gone) costs a restart from the next source; an engine
source is tried twice, so the children of an engine whose own source broke off re-attach to it once it fetches
again. A source that sends nothing for STALL_SECONDS has failed. The newest complete version and the one arriving
are kept; older files are deleted.

Errors: `fetch` raises OSError (after every source failed, naming each failure); `serve` answers 404 for a version
it has not got, and cuts the connection (the child then falls back) when its own download fails.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger(__name__)
BLOCK = 1 << 20
"""The engines below are woken each time this much more has arrived."""
RECEIVE_BUFFER = 4 << 20
CONNECT_SECONDS = 30.0
STALL_SECONDS = 120.0
"""A source that sends nothing for this long has failed (no cap on a whole transfer: a large model on a slow link may
take longer than any fixed total)."""
RETRY_PAUSE = 0.5
APPEAR_SECONDS = 30.0
"""How long a request for a version this engine has not started to fetch waits for it: the controller places an
engine below another only after that one asked for the version, so its fetch is about to begin."""


@dataclass
class _Version:
    path: Path
    total: int | None = None  # bytes, once the source's Content-Length is known
    written: int = 0
    done: bool = False
    failed: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class Relay:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="kuberl-relay-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.versions: dict[int, _Version] = {}
        self.appeared = asyncio.Condition()  # a fetch began
        self.served_bytes = 0  # to engines below this one, over the process's life

    async def fetch(self, version: int, sources: list[str], headers: dict[str, str]) -> tuple[Path, str]:
        """Download `version` from the first of `sources` that delivers it whole; returns (file, source used)."""
        failures: list[str] = []
        # an engine above this one gets a second try: when its own source broke off it fetches again from the next
        # one and serves that copy, so its subtree re-attaches to it instead of all falling back to rank 0
        attempts = [s for source in sources[:-1] for s in (source, source)] + sources[-1:]
        for attempt, source in enumerate(attempts):
            if failures and attempt and attempts[attempt - 1] == source:
                await asyncio.sleep(RETRY_PAUSE)
            entry = _Version(self.folder / f"weights-{version:08d}-{len(failures)}.safetensors")
            async with self.appeared:
                self.versions[version] = entry
                self.appeared.notify_all()
            try:
                await self._download(source, headers, entry)
            except asyncio.CancelledError:
                entry.done = entry.failed = True  # the engine stops; an engine below reading it falls back
                raise
            except (OSError, http.client.HTTPException, ValueError) as error:
                failures.append(f"{source}: {type(error).__name__}: {error}")
                await self._finish(entry, failed=True)
                entry.path.unlink(missing_ok=True)
                log.warning("weights v%d from %s failed (%s); trying the next source", version, source, error)
                continue
            await self._finish(entry, failed=False)
            self._prune(keep=version)
            return entry.path, source
        self.versions.pop(version, None)
        raise OSError(f"weights of version {version}: every source failed: {'; '.join(failures)}")

    async def _download(self, source: str, headers: dict[str, str], entry: _Version) -> None:
        """Receive `source` into `entry`'s file in a thread (the event loop keeps serving the engines below)."""
        loop = asyncio.get_running_loop()

        def announce() -> None:  # from the receiving thread: wake the engines below, in the loop
            asyncio.run_coroutine_threadsafe(_notify(entry.changed), loop)

        connections: list[http.client.HTTPConnection] = []
        try:
            await asyncio.to_thread(_receive, source, headers, entry, announce, connections)
        except asyncio.CancelledError:  # the engine stops: wake the thread blocked in recv, or it runs on
            for connection in connections:
                if connection.sock is not None:
                    connection.sock.shutdown(socket.SHUT_RDWR)
            raise
        await _notify(entry.changed)
        if entry.written != entry.total:
            raise ValueError(f"got {entry.written} of {entry.total} bytes")

    async def _finish(self, entry: _Version, failed: bool) -> None:
        async with entry.changed:
            entry.done, entry.failed = True, failed
            entry.changed.notify_all()

    def _prune(self, keep: int) -> None:
        for version in [v for v in self.versions if v < keep]:
            self.versions.pop(version).path.unlink(missing_ok=True)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """GET /weights/<version>: the file as it arrives (Content-Length: the whole file)."""
        name = request.match_info["version"]
        if not name.isdigit():
            return web.json_response({"error": f"no such version {name!r}"}, status=404)
        version = int(name)
        if version not in self.versions and version > max(self.versions, default=0):
            try:
                async with self.appeared:
                    await asyncio.wait_for(self.appeared.wait_for(lambda: version in self.versions), APPEAR_SECONDS)
            except TimeoutError:
                pass
        entry = self.versions.get(version)
        if entry is None or entry.failed:
            return web.json_response({"error": f"this engine has no weights of version {name}"}, status=404)
        async with entry.changed:
            await entry.changed.wait_for(lambda: entry.total is not None or entry.done)
        if entry.failed or entry.total is None:
            return web.json_response({"error": f"weights of version {name} failed here"}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = entry.total
        await response.prepare(request)  # a StreamResponse sends its headers here: the body may go by sendfile
        loop, transport, sent = asyncio.get_running_loop(), request.transport, 0
        if transport is None:
            raise ConnectionResetError("the engine below went away")
        with entry.path.open("rb") as handle:
            while sent < entry.total:
                async with entry.changed:
                    await entry.changed.wait_for(functools.partial(_arrived, entry, sent))
                if entry.failed:
                    raise ConnectionResetError("the upstream transfer failed")  # the child falls back
                count = entry.written - sent
                if count <= 0:
                    continue
                # what has arrived, by sendfile(2) (asyncio falls back to reads and writes where it cannot)
                await loop.sendfile(transport, handle, sent, count)
                sent += count
                self.served_bytes += count
        await response.write_eof()
        return response

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


async def _notify(changed: asyncio.Condition) -> None:
    async with changed:
        changed.notify_all()


def _receive(
    source: str,
    headers: dict[str, str],
    entry: _Version,
    announce: Callable[[], None],
    connections: list[http.client.HTTPConnection],
) -> None:
    """GET `source` (http://) into `entry.path` as it arrives: `recv_into` a reused buffer, `os.write` it to the file,
    then count it in `entry.written` (so what `written` counts is in the file when a reader sees it), announcing
    every BLOCK. http.client's `readinto` reaches ~1 GB/s on loopback here, aiohttp's stream ~0.7
    (docs/benchmarks.md 4b). Raises OSError (connect, HTTP status, a STALL_SECONDS stall), http.client's
    HTTPException (a connection cut before Content-Length bytes) or ValueError (no Content-Length, not http://).
    """
    url = urlsplit(source)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"not an http:// source: {source!r}")
    connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=CONNECT_SECONDS)
    connections.append(connection)  # the caller shuts it down when it is cancelled
    try:
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(STALL_SECONDS)
        connection.request("GET", url.path or "/", headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}: {response.read(300).decode(errors='replace')}")
        length = response.getheader("Content-Length")
        if length is None or not length.isdigit():
            raise ValueError("no Content-Length")
        entry.total = int(length)
        announce()
        buffer = memoryview(bytearray(RECEIVE_BUFFER))
        fd = os.open(entry.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            unannounced = 0
            while count := response.readinto(buffer):
                view = buffer[:count]
                while view:
                    view = view[os.write(fd, view) :]
                entry.written += count
                unannounced += count
                if unannounced >= BLOCK:
                    unannounced = 0
                    announce()
        finally:
            os.close(fd)
    finally:
        connection.close()


def _arrived(entry: _Version, sent: int) -> bool:
    """More bytes than `sent` are in the file, or the download ended."""
    return entry.written > sent or entry.done
