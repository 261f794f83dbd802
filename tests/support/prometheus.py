"""The chart's dashboard and alert rules as tests see them, checked with promtool and against a real Prometheus."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.net import free_port, http_get
from support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kuberl"
DASHBOARD = CHART / "dashboards" / "kuberl.json"
ALERT_TESTS = CHART / "tests" / "alerts.test.yaml"
METRIC = re.compile(r"\bkuberl_[a-z0-9_]+")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.DOTALL)


# --- the chart --------------------------------------------------------------------------------------------------


def render_chart(*sets: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with these `--set` values: the documents, empty ones dropped."""
    command = [tool("helm"), "template", "t", str(CHART)]
    for value in sets:
        command += ["--set", value]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def alert_rules() -> dict[str, Any]:
    """The spec (rule groups) of the PrometheusRule the chart renders with its default thresholds."""
    rules = [d for d in render_chart("prometheusRule.enabled=true") if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1, [d["kind"] for d in rules]
    return dict(rules[0]["spec"])


def alert_exprs(spec: dict[str, Any]) -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for group in spec["groups"] for rule in group["rules"] if "alert" in rule}


def promtool(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# --- the dashboard ----------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels") or []
        else:
            found.append(panel)
    return found


def dashboard_queries(board: dict[str, Any]) -> dict[str, str]:
    """'panel title [refId]' → PromQL of every panel target; 'variable NAME' → the series selector of each
    label_values() query variable (a selector is PromQL too)."""
    queries = {f"{p['title']} [{t['refId']}]": t["expr"] for p in panels(board) for t in p.get("targets") or []}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"].strip())
            assert match, f"variable {variable['name']}: not a label_values() query"
            queries[f"variable {variable['name']}"] = match["selector"]
    return queries


def substitute(expr: str, namespace: str, job: str, rate_interval: str) -> str:
    """What Grafana sends: the dashboard's variables replaced (namespace and job are regexes)."""
    done = expr.replace("$__rate_interval", rate_interval).replace("$namespace", namespace).replace("$job", job)
    assert "$" not in done, f"unknown variable in {expr!r}"
    return done


def metric_names(expr: str) -> set[str]:
    """The kuberl series names an expression reads (label values in quotes are not names)."""
    return set(METRIC.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


def used_metric_names() -> dict[str, set[str]]:
    """Series name → where the dashboard or an alert reads it."""
    sources = {f"dashboard: {k}": v for k, v in dashboard_queries(dashboard()).items()}
    sources |= {f"alert {k}": v for k, v in alert_exprs(alert_rules()).items()}
    used: dict[str, set[str]] = {}
    for where, expr in sources.items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def exposition_names(text: str) -> set[str]:
    """The sample names (with _total, _bucket, _sum, _count) of a /metrics body."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


# --- a real Prometheus ------------------------------------------------------------------------------------------


class PrometheusServer:
    """The `prometheus` binary on a loopback port, scraping every second whatever targets are written to its
    file_sd file. `honor_labels` keeps the metrics' own `job` label (the RLJob's name), as the dashboard expects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}"
        self.targets_file = root / "targets.json"
        self.log = root / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> PrometheusServer:
        self.set_targets([])
        scrape = {
            "job_name": "kuberl",
            "honor_labels": True,
            "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
        }
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [scrape]}
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        command = [
            tool("prometheus"),
            f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            "--storage.tsdb.retention.time=1h",
        ]
        self.process = subprocess.Popen(command, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            return http_get(f"{self.url}/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def set_targets(self, targets: Iterable[str]) -> None:
        """Replace the scraped host:port list (written whole and renamed, so Prometheus never reads half a file)."""
        partial = self.targets_file.with_suffix(".tmp")
        partial.write_text(json.dumps([{"targets": sorted(targets), "labels": {}}]))
        partial.replace(self.targets_file)

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", f"{path} {params}: {status} {reply}"
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def health(self) -> dict[str, str]:
        """host:port → 'up', 'down' or 'unknown' (not scraped yet), for every active target."""
        return {t["labels"]["instance"]: t["health"] for t in self.api("targets", state="active")["activeTargets"]}


def metrics_address(pod: dict[str, Any]) -> str:
    """podIP:port of a kuberl pod's metrics: its role port, the only port kuberl gives the main container."""
    port = next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or [])
    return f"{pod['status']['podIP']}:{port}"


def check_live(
    prometheus: PrometheusServer, targets: dict[str, str], namespace: str, job: str, timeout: float = 60
) -> None:
    """Scrape `targets` (name → host:port: the operator and one pod per role) and assert that (a) every series the
    dashboard and the alerts read is in their /metrics and (b) every dashboard query returns finite data."""
    prometheus.set_targets(targets.values())
    exported: set[str] = set()
    for name, address in targets.items():
        status, body = http_get(f"http://{address}/metrics")
        assert status == 200, f"{name} {address}/metrics: {status}"
        exported |= exposition_names(body.decode())
    missing = {name: sorted(where) for name, where in used_metric_names().items() if name not in exported}
    assert not missing, f"read by the dashboard or alerts but exported by none of {sorted(targets)}: {missing}"

    # names are DNS labels: as regexes they match themselves ('.' aside), so they go in unescaped, as Grafana sends a
    # single selected value
    queries = {title: substitute(expr, namespace, job, "30s") for title, expr in dashboard_queries(dashboard()).items()}
    deadline = time.monotonic() + timeout
    while True:
        health = prometheus.health()
        up = all(health.get(address) == "up" for address in targets.values())
        failed = {title: expr for title, expr in queries.items() if not up or not _has_data(prometheus.query(expr))}
        if not failed:
            return
        if time.monotonic() > deadline:
            report = "\n".join(f"  {title}: {expr}" for title, expr in failed.items())
            raise AssertionError(f"dashboard queries without data after {timeout:.0f}s:\n{report}\ntargets: {health}")
        time.sleep(1)


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)
