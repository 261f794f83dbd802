"""Runs untrusted Python in a child process with limits: CPU time, wall time, memory, file size, no child
processes, an empty temporary directory, no network and no files outside that directory and Python's own.

Layers, each a backstop for the one before: (1) a user and network namespace of its own where the kernel allows
(`unshare(CLONE_NEWUSER | CLONE_NEWNET)`: no interface but loopback); (2) a Python audit hook (PEP 578) installed
before the program runs, which refuses sockets, process creation, ctypes, and file access outside the sandbox
directory (reads of Python's own directories allowed); (3) resource limits (setrlimit); (4) a wall-clock kill of
the whole process group; (5) a minimal environment (no token, no controller variables). The audit hook is not a
security boundary against native code: for hostile workloads the namespaces (or a gVisor runtime class for the
controller pod) are what hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
DENIED_FD_ENV = "KUBERL_SANDBOX_DENIED_FD"

# Runs first in the sandboxed interpreter: installs the audit hook, then execs the program as __main__.
_BOOTSTRAP = r"""
import os, sys
_ROOT = os.path.realpath(sys.argv[1])
_READ = tuple(os.path.realpath(p) for p in sys.argv[3].split(os.pathsep) if p) + ("/dev/null", "/dev/urandom")
_FD = int(os.environ.pop("KUBERL_SANDBOX_DENIED_FD"))
_write, _real = os.write, os.path.realpath
_DENY = {"socket.__new__": "network", "socket.connect": "network", "socket.bind": "network",
         "socket.getaddrinfo": "network", "os.fork": "process", "os.forkpty": "process", "os.posix_spawn": "process",
         "os.exec": "process", "os.spawn": "process", "os.system": "process", "subprocess.Popen": "process",
         "pty.spawn": "process", "os.kill": "process", "ctypes.dlopen": "native", "ctypes.dlsym": "native",
         "ctypes.cdata": "native", "os.putenv": "environment", "os.unsetenv": "environment"}
_WRITES = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
           "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.chdir"}
_LISTS = {"os.listdir", "os.scandir", "glob.glob", "os.walk"}
def _inside(path, roots):
    try:
        path = _real(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)
def _refuse(kind, event):
    try:
        _write(_FD, (kind + "\n").encode())
    except OSError:
        pass
    raise PermissionError(f"kuberl sandbox: {event} is not allowed")
def _hook(event, args):
    if event in _DENY:
        _refuse(_DENY[event], event)
    if event == "open":
        path, mode = args[0], args[1] or "r"
        if isinstance(path, int):
            return
        writing = any(c in str(mode) for c in "wax+") or (isinstance(args[2], int) and args[2] & 3)
        if not _inside(path, (_ROOT,) if writing else (_ROOT,) + _READ):
            _refuse("file", f"open({path!r})")
    elif event in _WRITES and args and not _inside(args[0], (_ROOT,)):
        _refuse("file", f"{event}({args[0]!r})")
    elif event in _LISTS and args and args[0] is not None and not _inside(args[0], (_ROOT,) + _READ):
        _refuse("file", f"{event}({args[0]!r})")
with open(sys.argv[2], encoding="utf-8") as _f:
    _code = compile(_f.read(), "program.py", "exec")
del _f
sys.addaudithook(_hook)
sys.argv = ["program.py"]
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mib: int = 512
    output_kib: int = 1024


@dataclass(frozen=True)
class Result:
    """`passed`: the program exited 0. `reason`: `passed`, `tests_failed`, `timeout`, `cpu_time`, `memory`,
    `output_limit`, `denied_<network|process|file|native|environment>`, or `killed`. `isolation`: `namespace`
    (own user and network namespace) or `audit-hook` (the kernel refused namespaces).
    """

    passed: bool
    reason: str
    isolation: str
    stderr_tail: str = ""


def _readable_roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, paths["stdlib"], paths["platstdlib"], paths["purelib"]}
    return sorted(r for r in roots if r)


def _child_setup(limits: SandboxLimits, mark: Path) -> None:
    """Runs in the forked child before exec: namespaces (recorded in `mark` for the parent), then limits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        mark.write_text("namespace")
    mib = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mib * mib, limits.memory_mib * mib))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_kib * 1024, limits.output_kib * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(program: str, limits: SandboxLimits) -> Result:
    """Run `program` (Python source) under `limits`; never raises for anything the program does."""
    with tempfile.TemporaryDirectory(prefix="kuberl-sandbox-") as tmp:
        root = Path(tmp) / "work"
        root.mkdir()
        (root / "program.py").write_text(program, encoding="utf-8")
        mark = Path(tmp) / "isolation"
        denied_read, denied_write = os.pipe()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(root),
            "TMPDIR": str(root),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            DENIED_FD_ENV: str(denied_write),
        }
        argv = [sys.executable, "-I", "-c", _BOOTSTRAP, str(root), str(root / "program.py")]
        argv.append(os.pathsep.join(_readable_roots()))
        with (root / ".stdout").open("wb") as out, (root / ".stderr").open("wb") as err:
            process = subprocess.Popen(
                argv,
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(denied_write,),
                start_new_session=True,  # its own process group: the timeout kills everything it started
                preexec_fn=lambda: _child_setup(limits, mark),
            )
            os.close(denied_write)
            try:
                code = process.wait(timeout=limits.wall_seconds)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        denied = os.read(denied_read, 4096).decode(errors="replace").split()
        os.close(denied_read)
        stderr = (root / ".stderr").read_bytes()[-2000:].decode(errors="replace")
        where = "namespace" if mark.exists() else "audit-hook"
        return Result(code == 0 and not timed_out, _reason(code, timed_out, denied, stderr), where, stderr)


def _reason(code: int, timed_out: bool, denied: list[str], stderr: str) -> str:
    if timed_out:
        return "timeout"
    if code == 0:
        return "passed"
    if code == -signal.SIGXCPU:
        return "cpu_time"
    if code == -signal.SIGXFSZ or "File too large" in stderr:  # Python ignores SIGXFSZ: the write fails
        return "output_limit"
    if denied:
        return f"denied_{denied[0]}"
    if "MemoryError" in stderr:
        return "memory"
    return "killed" if code < 0 else "tests_failed"
