"""Shared helpers of the observability checks (run by `scripts/test.sh observability`).

They need `promtool` and `prometheus` (Debian package `prometheus`, installed by
scripts/test.sh) and PyYAML and jsonschema_rs (tests/python/requirements.txt). No Docker:
the compose file is checked against the Compose Specification schema vendored here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import promql

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
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


@dataclass(frozen=True)
class Family:
    name: str
    type: str  # gauge, counter, histogram
    labels: frozenset[str]


def load_catalogue() -> dict[str, Family]:
    families: dict[str, Family] = {}
    for n, line in enumerate(CATALOGUE.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        assert len(parts) == 3, f"metrics.txt:{n}: expected 'name type labels', got {line!r}"
        name, typ, labels = parts
        assert typ in ("gauge", "counter", "histogram"), f"metrics.txt:{n}: type {typ!r}"
        assert name not in families, f"metrics.txt:{n}: {name} listed twice"
        families[name] = Family(name, typ, frozenset() if labels == "-" else frozenset(labels.split(",")))
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
