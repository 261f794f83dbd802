"""Per-pod network links on one machine: Linux traffic control (tc, HTB on the loopback device) shapes the traffic
each server port sends to a fixed rate, as a pod's network interface caps what it can send.

Without it every "pod" of a local benchmark shares this machine's memory bandwidth and cores, so adding engines adds
no sending capacity and no transport can show the time a cluster would see; with it, each sender is one link of
`rate` (the CPU must stay well under its own limit: shape below the aggregate the machine reaches unshaped).
Needs root and `tc` (iproute2); `unavailable()` says why not, and the benchmark then leaves these rows out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from types import TracebackType

DEVICE = "lo"


def unavailable() -> str | None:
    """None when links can be shaped here, else why not."""
    if shutil.which("tc") is None:
        return "no tc (iproute2) on this machine"
    if os.geteuid() != 0:
        return "tc needs root"
    shown = subprocess.run(["tc", "qdisc", "show", "dev", DEVICE], capture_output=True, text=True)
    if shown.returncode != 0:
        return f"tc qdisc show failed: {shown.stderr.strip()}"
    if "htb" in shown.stdout:
        return f"{DEVICE} already has an htb qdisc (another run's? remove it with: tc qdisc del dev {DEVICE} root)"
    return None


class Links:
    """`with Links(megabytes_per_second) as links: links.shape(port)`; the qdisc is removed on exit."""

    def __init__(self, megabytes_per_second: float) -> None:
        self.rate = f"{megabytes_per_second * 8:g}mbit"
        self.classes = 0

    def _tc(self, *args: str) -> None:
        done = subprocess.run(["tc", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"tc {' '.join(args)}: {done.stderr.strip()}")

    def __enter__(self) -> Links:
        # unclassified traffic (default class 0xffff does not exist) is sent unshaped: only the shaped ports wait
        self._tc("qdisc", "add", "dev", DEVICE, "root", "handle", "1:", "htb", "default", "ffff", "r2q", "1000")
        return self

    def shape(self, port: int) -> None:
        """Everything sent from local TCP port `port` (a server's replies) shares one link of the rate."""
        self.classes += 1
        classid = f"1:{self.classes}"
        self._tc(
            "class",
            "add",
            "dev",
            DEVICE,
            "parent",
            "1:",
            "classid",
            classid,
            "htb",
            "rate",
            self.rate,
            "ceil",
            self.rate,
            "burst",
            "256k",
            "cburst",
            "256k",
        )
        self._tc(
            "filter",
            "add",
            "dev",
            DEVICE,
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "sport",
            str(port),
            "0xffff",
            "flowid",
            classid,
        )

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", DEVICE, "root"], capture_output=True)
