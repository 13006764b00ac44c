"""Shared helpers of the observability checks (run by `scripts/test.sh observability`).

They need `promtool` and `prometheus` (Debian package `prometheus`, installed by
scripts/test.sh), PyYAML, jsonschema_rs and paho-mqtt (tests/python/requirements.txt) and the
tern binary (target/debug/tern, or TERN_BIN). No Docker: the compose file is checked against
the Compose Specification schema vendored here.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import promql

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# tests/python holds the `tern serve` runner shared by both suites (ternserver.py) and the
# MQTT client helpers (mqttutil.py). Appended, so that this directory's modules come first.
PYTHON_TESTS = REPO / "tests" / "python"
if str(PYTHON_TESTS) not in sys.path:
    sys.path.append(str(PYTHON_TESTS))
PROMETHEUS_DIR = REPO / "prometheus"
GRAFANA_DIR = REPO / "grafana"
DOCKER_DIR = REPO / "docker"
DASHBOARD = GRAFANA_DIR / "dashboards" / "tern.json"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
COMPOSE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
CATALOGUE = HERE / "metrics.txt"

# Series Prometheus makes itself for every target; `up` is what TernDown watches.
PROMETHEUS_SYNTHETIC = {
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added",
}
# Labels every scraped series gets from Prometheus.
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# The values tern gives its bounded labels (docs/observability.md, "Label values"; the Rust
# side's label enums), per (family, label). Every one is exported from the start, at 0, so that rate() sees the first
# event. Labels not listed take configured or open-ended values: `listener` (listener
# names), `version`, and the admin API's `route` (route templates), `method` (HTTP methods)
# and `status`.
PROTOCOLS = ("3.1", "3.1.1", "5.0")
QOS_LEVELS = ("0", "1", "2")
REFUSAL_REASONS = (
    "unsupported_protocol", "malformed", "no_connect", "client_id_invalid", "bad_credentials",
    "not_authorized", "banned", "bad_auth_method", "auth_failed", "will_refused",
    "connection_limit", "session_limit", "session_owner", "server_unavailable",
    "connect_timeout", "too_many_pending", "rate_limited",
)
DISCONNECT_REASONS = (
    "client", "client_will", "connection_lost", "keep_alive_timeout", "taken_over",
    "protocol_error", "packet_too_large", "not_authorized", "credentials_expired",
    "write_timeout", "shutdown", "admin", "quota_exceeded", "rate_limited", "other",
)
# tern_throttled_total: pauses for rate_limits.publish_rate, publish_bytes_rate, outbound_bytes_rate.
THROTTLE_KINDS = ("messages", "bytes", "outbound_bytes")
DROP_REASONS = ("queue_full", "queue_refused", "expired", "acl", "too_large", "no_subscriber")
# "will": a CONNECT whose will topic the principal may not publish to (refused, will_refused).
ACL_ACTIONS = ("publish", "subscribe", "deliver", "will")
AUTH_METHODS = ("password", "jwt", "cert", "anonymous", "scram", "none")
AUTH_FAILURE_REASONS = ("bad_credentials", "not_authorized", "banned", "unavailable", "bad_method", "other")
LABEL_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("tern_connections", "protocol"): PROTOCOLS,
    ("tern_connections_accepted_total", "protocol"): PROTOCOLS,
    ("tern_connections_refused_total", "reason"): REFUSAL_REASONS,
    ("tern_disconnects_total", "reason"): DISCONNECT_REASONS,
    ("tern_messages_received_total", "qos"): QOS_LEVELS,
    ("tern_messages_sent_total", "qos"): QOS_LEVELS,
    ("tern_messages_dropped_total", "reason"): DROP_REASONS,
    ("tern_throttled_total", "kind"): THROTTLE_KINDS,
    ("tern_acl_denials_total", "action"): ACL_ACTIONS,
    ("tern_auth_failures_total", "method"): AUTH_METHODS,
    ("tern_auth_failures_total", "reason"): AUTH_FAILURE_REASONS,
    ("tern_sessions", "state"): ("online", "offline"),
    ("tern_store_pool_connections", "state"): ("in_use", "idle"),
    ("tern_cluster_nodes", "state"): ("up", "silent", "down", "adopted"),
}
# The fourth column of metrics.txt: families exported only in a configuration the live
# checks' single tern does not run.
CONDITIONS = ("cluster",)


@dataclass(frozen=True)
class Family:
    name: str
    type: str  # gauge, counter, histogram
    labels: frozenset[str]
    only: str | None = None  # a CONDITIONS entry: exported only then (e.g. "cluster")


def load_catalogue() -> dict[str, Family]:
    families: dict[str, Family] = {}
    for n, line in enumerate(CATALOGUE.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        assert len(parts) in (3, 4), f"metrics.txt:{n}: expected 'name type labels [condition]', got {line!r}"
        name, typ, labels = parts[:3]
        only = parts[3] if len(parts) == 4 else None
        assert typ in ("gauge", "counter", "histogram"), f"metrics.txt:{n}: type {typ!r}"
        assert only is None or only in CONDITIONS, f"metrics.txt:{n}: condition {only!r} (known: {CONDITIONS})"
        assert name not in families, f"metrics.txt:{n}: {name} listed twice"
        families[name] = Family(name, typ, frozenset() if labels == "-" else frozenset(labels.split(",")), only)
    return families


@dataclass(frozen=True)
class Series:
    """A series name an expression may select, resolved against the catalogue."""

    family: Family
    suffix: str  # "" or _bucket / _sum / _count for a histogram

    @property
    def is_counter_like(self) -> bool:
        return self.family.type == "counter" or self.suffix != ""

    @property
    def labels(self) -> frozenset[str]:
        extra = {"le"} if self.suffix == "_bucket" else set()
        return self.family.labels | TARGET_LABELS | extra


def resolve(name: str, catalogue: dict[str, Family]) -> Series | None:
    """The catalogue entry a selected series name belongs to, or None. A histogram is only
    selectable through its _bucket, _sum and _count series."""
    fam = catalogue.get(name)
    if fam is not None:
        return None if fam.type == "histogram" else Series(fam, "")
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            fam = catalogue.get(name[: -len(suffix)])
            if fam is not None and fam.type == "histogram":
                return Series(fam, suffix)
    return None


def check_expression(expr: str, catalogue: dict[str, Family], allow_synthetic: bool) -> list[str]:
    """Problems of one (Grafana-substituted) PromQL expression: unknown metrics, labels the
    metric does not have, rate() of a gauge, histogram_quantile without le."""
    sel = promql.selected(expr)
    problems = list(sel.problems)
    known_labels: set[str] = set(TARGET_LABELS)
    for name in sorted(sel.names):
        if allow_synthetic and name in PROMETHEUS_SYNTHETIC:
            continue
        series = resolve(name, catalogue)
        if series is None:
            hint = ""
            if name in catalogue and catalogue[name].type == "histogram":
                hint = " (a histogram: select name_bucket, name_sum or name_count)"
            problems.append(f"{name} is not a metric tern exports (tests/observability/metrics.txt){hint}")
            continue
        known_labels |= series.labels
    for name, uses in ((n, f) for n, f in sel.uses):
        series = resolve(name, catalogue)
        if series and set(uses) & promql.COUNTER_FUNCTIONS and not series.is_counter_like:
            problems.append(f"{'/'.join(uses)} over {name}, a {series.family.type}: rate() and "
                            "increase() need a counter")
    for name, labels in sel.matchers:
        series = resolve(name, catalogue)
        if series is None:
            continue
        unknown = labels - series.labels - {"__name__"}
        if unknown:
            problems.append(f"{name} has no label {', '.join(sorted(unknown))} "
                            f"(it has {', '.join(sorted(series.labels))})")
    unknown = sel.grouping - known_labels
    if unknown:
        problems.append(f"grouping by {', '.join(sorted(unknown))}, which no selected metric has")
    if "histogram_quantile" in expr and "le" not in sel.grouping and "_bucket" in expr:
        if any(f in expr for f in ("sum", "avg", "max", "min")):
            problems.append("histogram_quantile over an aggregation that drops le")
    return problems


@pytest.fixture(scope="session")
def catalogue() -> dict[str, Family]:
    return load_catalogue()


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's 'prometheus' package (scripts/test.sh does)")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    return proc


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run([need_tool("promtool"), *args], cwd=cwd)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


def load_yaml(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def load_dashboard() -> dict:
    with DASHBOARD.open() as f:
        return json.load(f)


def dashboard_panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


@dataclass(frozen=True)
class Query:
    where: str  # e.g. "panel 'Connections' (id 2) target A"
    expr: str  # as written, with Grafana variables
    legend: str = ""


def dashboard_queries(dash: dict) -> list[Query]:
    """Every PromQL expression of the dashboard: panel targets, template variable queries
    (label_values(selector, label) / query_result(expr)) and annotation queries."""
    queries: list[Query] = []
    for p in dashboard_panels(dash):
        if p.get("type") == "row":
            continue
        for t in p.get("targets", []):
            queries.append(Query(f"panel {p.get('title')!r} (id {p.get('id')}) target {t.get('refId')}",
                                 t.get("expr", ""), t.get("legendFormat", "")))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        text = q.get("query", "") if isinstance(q, dict) else (q or "")
        expr = promql.label_values_selector(text)
        if expr is not None:
            queries.append(Query(f"variable {v.get('name')!r}", expr))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            queries.append(Query(f"annotation {a.get('name')!r}", a["expr"]))
    return queries


def alert_rules() -> list[dict]:
    doc = load_yaml(ALERTS)
    return [r for g in doc["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------------------------
# A real Prometheus (Debian's `prometheus`), started by the tests
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, deadline: float = 30.0, interval: float = 0.5):
    """Poll `check()` until it returns True; fail with its last other value after `deadline`
    seconds (so a check returns True, or a description of what it sees)."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = check()
        if last is True:
            return
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}: {last}")


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, base: str, log: Path):
        self.base = base
        self.log = log

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def targets(self) -> list[dict]:
        return self.get("/api/v1/targets")["activeTargets"]

    def alerting_rules(self) -> list[dict]:
        groups = self.get("/api/v1/rules", type="alert")["groups"]
        return [r for g in groups for r in g["rules"]]

    def wait_scrapes(self, job: str, n: int, deadline: float = 30.0) -> None:
        """Wait until the job's target has been scraped successfully n times."""
        def scraped():
            if self.query(f'sum_over_time(up{{job="{job}"}}[10m]) >= {n} and up{{job="{job}"}} == 1'):
                return True
            return [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in self.targets()]
        wait_for(f"{n} successful scrapes of job {job}", scraped, deadline)


@contextmanager
def running_prometheus(tmp: Path, job: str, target: str, *, rule_files: tuple[Path, ...] = (),
                       bearer_token: str | None = None, interval: str = "1s") -> Iterator[Prometheus]:
    """A Prometheus scraping http://{target}/metrics as job `job` every `interval`, with
    `rule_files` loaded and evaluated at the same interval; stopped on exit."""
    binary = need_tool("prometheus")
    scrape: dict = {
        "job_name": job,
        "metrics_path": "/metrics",
        "static_configs": [{"targets": [target]}],
    }
    if bearer_token is not None:
        scrape["authorization"] = {"type": "Bearer", "credentials": bearer_token}
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(f) for f in rule_files],
        "scrape_configs": [scrape],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp / "prometheus.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", log_path)

    def ready():
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited {proc.returncode}: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError as e:
            return str(e)

    try:
        wait_for("prometheus to be ready", ready)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the log of every tern a failing test used (a fixture value that is a TernServer
    or has one as `.server`), last 200 lines."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            server = getattr(value, "server", value)
            if hasattr(server, "proc") and callable(getattr(server, "log", None)):
                tail = "\n".join(server.log().splitlines()[-200:])
                report.sections.append((f"tern log ({name}, last 200 lines)", tail))
    return report
