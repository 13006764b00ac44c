"""A real Prometheus (Debian's `prometheus`) scraping a stand-in of tern's /metrics made from
metrics.txt (fake_exporter.py), with prometheus/alerts.yml loaded: every dashboard query must
return series, with the labels its legend shows, and the alert rules must evaluate cleanly,
stay quiet on a healthy broker and go pending when the database or the target goes down.

When tern exports the metrics itself, the same checks run against the real binary in the
live-scrape test (issue 18); this one keeps the dashboard and the rules honest without it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

import promql
from conftest import ALERTS, dashboard_queries, load_dashboard, need_tool
from fake_exporter import FakeExporter

SCRAPE = "1s"
# Grafana's $__rate_interval is at least 4 scrape intervals.
DURATIONS = {k: ("5s" if "rate" in k else "30s") for k in promql.GRAFANA_DURATIONS}
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, base: str):
        self.base = base

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


def wait_for(what: str, check, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = check()
        if last is True:
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}: {last}")


@pytest.fixture(scope="module")
def exporter(catalogue):
    with FakeExporter(catalogue) as exp:
        yield exp


@pytest.fixture(scope="module")
def prometheus(exporter, tmp_path_factory):
    binary = need_tool("prometheus")
    tmp: Path = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": "tern",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")

    def ready():
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited {proc.returncode}: {(tmp / 'prometheus.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError as e:
            return str(e)

    try:
        wait_for("prometheus to be ready", ready)
        # Enough scrapes for every rate window: 4 samples of the target.
        wait_for("4 scrapes of the stand-in",
                 lambda: bool(prom.query('count_over_time(up{job="tern"}[1m]) >= 4'))
                 or prom.query('up{job="tern"}'))
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_stand_in_exposition_passes_promtool_check_metrics(exporter):
    """promtool's lint (naming, units, _total) on an exposition with every catalogue name:
    what `promtool check metrics` will say about tern's real /metrics."""
    proc = subprocess.run([need_tool("promtool"), "check", "metrics"], input=exporter.exposition.render(),
                          capture_output=True, text=True, timeout=30)
    # HELP texts here are placeholders; only naming problems count.
    problems = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip() and "HELP" not in l]
    assert not problems, "\n".join(problems)


def test_target_is_up(prometheus):
    (s,) = prometheus.query('up{job="tern"}')
    assert s["value"][1] == "1"


def test_every_dashboard_query_returns_series_with_its_legend_labels(prometheus):
    failures = []
    for q in dashboard_queries(load_dashboard()):
        # $job and $instance stand in regex matchers (=~) in the dashboard: ".+" selects all.
        expr = promql.substitute_grafana(q.expr, DURATIONS, value=".+")
        result = prometheus.query(expr)
        if q.where.startswith("annotation"):
            continue  # restarts: nothing to show on a stand-in that never restarts
        if not result:
            failures.append(f"{q.where}: no data for {expr}")
            continue
        wanted = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", q.legend))
        for s in result:
            missing = wanted - set(s["metric"])
            if missing:
                failures.append(f"{q.where}: legend {q.legend!r} but the series has no {missing}: {s['metric']}")
                break
            if s["value"][1] in ("NaN", "+Inf", "-Inf"):
                failures.append(f"{q.where}: {s['value'][1]} for {expr}")
                break
    assert not failures, "\n".join(failures)


def alerting_rules(prom: Prometheus) -> list[dict]:
    groups = prom.get("/api/v1/rules", type="alert")["groups"]
    return [r for g in groups for r in g["rules"]]


def test_alert_rules_load_and_evaluate(prometheus):
    def evaluated():
        rules = alerting_rules(prometheus)
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
        return True if rules and not bad else bad or "no rules"

    wait_for("every alert rule evaluated without error", evaluated)
    names = {r["name"] for r in alerting_rules(prometheus)}
    assert {"TernDown", "TernDatabaseUnavailable", "TernConnectionsNearLimit"} <= names


def test_no_alert_on_a_healthy_broker(prometheus):
    time.sleep(2)  # a couple more evaluations
    active = [(r["name"], r["state"]) for r in alerting_rules(prometheus) if r["state"] != "inactive"]
    assert not active


def test_database_down_makes_the_alert_pending(prometheus, exporter):
    exporter.exposition.store_up = 0
    try:
        def pending():
            states = {r["name"]: r["state"] for r in alerting_rules(prometheus)}
            return True if states.get("TernDatabaseUnavailable") == "pending" else states
        wait_for("TernDatabaseUnavailable pending", pending)
    finally:
        exporter.exposition.store_up = 1


def test_target_down_makes_tern_down_pending(prometheus, exporter):
    # Last: stops the stand-in for good.
    exporter.stop()

    def pending():
        states = {r["name"]: r["state"] for r in alerting_rules(prometheus)}
        return True if states.get("TernDown") == "pending" else states
    wait_for("TernDown pending", pending)

