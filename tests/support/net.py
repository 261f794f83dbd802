"""Loopback helpers for tests that start real servers."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body), with an optional bearer token; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def host_address() -> str:
    """This machine's first non-loopback IPv4 address: an address the API server's pod proxy accepts (it refuses
    loopback and link-local ones). Raises AssertionError, saying so, on a machine without one."""
    candidates = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:  # the source address of the default route (a UDP connect sends nothing)
            probe.connect(("192.0.2.254", 9))
            candidates.add(probe.getsockname()[0])
        except OSError:
            pass
    usable = sorted(a for a in candidates if not a.startswith(("127.", "169.254.")) and a != "0.0.0.0")
    assert usable, f"no non-loopback IPv4 address on this machine (have {sorted(candidates)})"
    return usable[0]
