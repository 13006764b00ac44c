"""A real Prometheus (Debian's `prometheus`), started by the tests, with prometheus/alerts.yml
loaded, scraping

- `TestTern`: the real tern binary (issue 18). tern runs with a plain TCP and a TLS listener
  and `admin.metrics_token` set, which Prometheus sends as a bearer token. After a workload
  (publishes of every QoS to 3.1.1 and 5.0 subscribers, retained and queued messages that
  the store commits, a will, a refused CONNECT, a failed TLS handshake, admin API requests)
  a query through Prometheus' HTTP API returns the workload's exact connection counts and
  tern_build_info; every dashboard query returns data with the labels its legend shows (but
  those of the Cluster row: a single node exports no cluster family, metrics.txt);
  every alert rule evaluates without error, names only series tern exports, and none is
  active on the healthy broker; stopping tern makes TernDown pending.
- `TestStandIn`: a stand-in of /metrics made from metrics.txt (fake_exporter.py), for what a
  short run of tern cannot show: every series of every label value at once, and
  TernDatabaseUnavailable going pending when the store goes down.
"""

from __future__ import annotations

import math
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import promql
from conftest import (
    ALERTS,
    PROMETHEUS_SYNTHETIC,
    Prometheus,
    dashboard_queries,
    load_catalogue,
    load_dashboard,
    need_tool,
    resolve,
    running_prometheus,
    wait_for,
)
from exposition import Scrape, scrape
from fake_exporter import FakeExporter
from mqttutil import PahoClient
from rawmqtt import V311, RawClient
from ternserver import TernServer, clean_env, split_addr, tern_bin

JOB = "tern"  # the job name the alerts (TernDown) and the dashboard's default assume


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend))


def conditional(expr: str) -> bool:
    """Whether a query selects only families tern exports in some configurations (metrics.txt's
    fourth column, e.g. cluster mode): the single tern of TestTern has no data for it."""
    catalogue = load_catalogue()
    series = [resolve(n, catalogue) for n in promql.selected(promql.substitute_grafana(expr)).names]
    return bool(series) and all(s is not None and s.family.only is not None for s in series)


def finite(sample: dict) -> bool:
    return math.isfinite(float(sample["value"][1]))


def alert_states(prom: Prometheus) -> dict[str, str]:
    return {r["name"]: r["state"] for r in prom.alerting_rules()}


def check_rules_evaluate(prom: Prometheus) -> None:
    def evaluated():
        rules = prom.alerting_rules()
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
        return True if rules and not bad else bad or "no rules"

    wait_for("every alert rule evaluated without error", evaluated)
    names = {r["name"] for r in prom.alerting_rules()}
    assert {"TernDown", "TernDatabaseUnavailable", "TernConnectionsNearLimit"} <= names


def check_no_alert_active(prom: Prometheus) -> None:
    # A couple more evaluations (1 s apart) than the rules already had.
    prom.wait_scrapes(JOB, 2 + int(prom.query(f'sum_over_time(up{{job="{JOB}"}}[10m])')[0]["value"][1]))
    active = [(r["name"], r["state"]) for r in prom.alerting_rules() if r["state"] != "inactive"]
    assert not active


def wait_pending(prom: Prometheus, alert: str) -> None:
    def pending():
        states = alert_states(prom)
        return True if states.get(alert) == "pending" else states
    wait_for(f"{alert} pending", pending)


# ---------------------------------------------------------------------------------------------
# The real tern
# ---------------------------------------------------------------------------------------------

TOKEN = "prometheus-scrape-token-0123456789"
# The workload happens in the first seconds of the run: rate windows that cover all of it.
TERN_DURATIONS = dict.fromkeys(promql.GRAFANA_DURATIONS, "5m")
TLS_READY_RE = re.compile(r"MQTT listener ready kind=tls addr=(\S+)")


def self_signed(d: Path) -> tuple[Path, Path]:
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "server.key", "-out", "server.pem", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        cwd=d, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"openssl failed:\n{proc.stderr}"
    return d / "server.pem", d / "server.key"


class TernRun:
    """A running tern with a tcp and a tls listener, and what its workload did."""

    def __init__(self, tmp: Path) -> None:
        cert, key = self_signed(tmp)
        config = tmp / "tern.toml"
        config.write_text(
            '[[listeners]]\nname = "tcp"\nkind = "tcp"\nbind = "127.0.0.1:0"\n\n'
            f'[[listeners]]\nname = "tls"\nkind = "tls"\nbind = "127.0.0.1:0"\n'
            f'cert_file = "{cert}"\nkey_file = "{key}"\n'
        )
        self.server = TernServer(env={
            "TERN_CONFIG": str(config),
            "TERN_DATABASE__URL": f"sqlite://{tmp / 'tern.db'}",
            "TERN_ADMIN__METRICS_TOKEN": TOKEN,
        })
        self.admin = self.server.admin_addr()
        self.tls_port = self._tls_port()
        self.version = subprocess.run([str(tern_bin()), "--version"], capture_output=True, text=True,
                                      env=clean_env(), timeout=30).stdout.split()[-1]
        self.clients: list = []
        # Successful CONNACKs of the workload, by protocol.
        self.accepted = {"5.0": 0, "3.1.1": 0}

    def _tls_port(self) -> int:
        def ready():
            return bool(TLS_READY_RE.search(self.server.log())) or "no tls listener line yet"
        wait_for("the tls listener", ready, deadline=10, interval=0.05)
        return split_addr(TLS_READY_RE.search(self.server.log()).group(1))[1]

    def metrics(self) -> Scrape:
        return scrape(f"http://{self.admin}", token=TOKEN)

    def admin_requests(self) -> None:
        base = f"http://{self.admin}"
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{base}/api/v1/clients", timeout=10).status_code == 401

    def paho(self, version: str, client_id: str, **kwargs) -> PahoClient:
        c = PahoClient(self.server.port, version, client_id, **kwargs)
        self.clients.append(c)
        return c

    def connect(self, c: PahoClient) -> PahoClient:
        c.connect()
        self.accepted["5.0" if c.version == "v5" else "3.1.1"] += 1
        return c

    def workload(self) -> None:
        """Anonymous clients (tern on loopback allows them), so no device provisioning."""
        self.admin_requests()
        sub5 = self.connect(self.paho("v5", "prom-sub5"))
        sub5.subscribe("w/#", 2)
        sub311 = self.connect(self.paho("v311", "prom-sub311"))
        sub311.subscribe("w/#", 1)
        pub = self.connect(self.paho("v5", "prom-pub"))
        for qos in (0, 1, 2):
            pub.publish(f"w/{qos}", f"qos {qos}", qos=qos)
            sub5.messages.expect_one()
            sub311.messages.expect_one()
        # A retained message and a queued one for an offline persistent session: the store
        # commits both (commit latency and batch size histograms).
        pub.publish("w/retained", "kept", qos=1, retain=True)
        durable = self.connect(self.paho("v5", "prom-durable", clean=False, session_expiry=300))
        durable.subscribe("w/durable", 1)
        durable.disconnect()
        # paho reports the disconnection once it has sent DISCONNECT: wait until tern has
        # taken the session offline too, or the next message may still be sent to it.
        wait_for("the persistent session to go offline",
                 lambda: self.metrics().value("tern_sessions", state="offline") == 1 or "not yet",
                 deadline=10, interval=0.05)
        pub.publish("w/durable", "queued", qos=1)
        # A will: the connection drops without DISCONNECT.
        will = self.connect(self.paho("v311", "prom-will", will={"topic": "w/will", "payload": "gone"}))
        will.abort()
        for sub in (sub5, sub311):
            got = [m.topic for m in sub.messages.expect(3)]
            assert got == ["w/retained", "w/durable", "w/will"], f"{sub.name}: {got}"
        # A refused CONNECT: 3.1.1, empty client id without clean session (return code 2).
        c = RawClient(self.server.port, V311)
        try:
            assert c.connect("", clean=False)[1] == 2
        finally:
            c.close()
        # A failed TLS handshake: plain text on the TLS port.
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        self.admin_requests()

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.terminate()
        self.server.join_logs()
        self.server.cleanup()


def total(prom: Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def by_qos(prom: Prometheus, name: str) -> dict[str, float]:
    return {s["metric"]["qos"]: float(s["value"][1]) for s in prom.query(f'{name}{{job="{JOB}"}}')}


class TestTern:
    @pytest.fixture(scope="class")
    def tern(self, tmp_path_factory) -> Iterator[TernRun]:
        run = TernRun(tmp_path_factory.mktemp("tern"))
        try:
            yield run
        finally:
            run.close()

    @pytest.fixture(scope="class")
    def prom(self, tern: TernRun, tmp_path_factory) -> Iterator[Prometheus]:
        with running_prometheus(tmp_path_factory.mktemp("prometheus"), JOB, tern.admin,
                                rule_files=(ALERTS,), bearer_token=TOKEN) as prom:
            # One scrape before the workload, so that every rate() has a point before it.
            prom.wait_scrapes(JOB, 1)
            tern.workload()
            want = sum(tern.accepted.values())

            def scraped():
                got = total(prom, f'sum(tern_connections_accepted_total{{job="{JOB}"}})')
                tls = total(prom, f'sum(tern_tls_handshake_failures_total{{job="{JOB}"}})')
                return True if (got, tls) == (want, 1) else f"accepted {got} (want {want}), TLS failures {tls}"

            wait_for("Prometheus to scrape the workload", scraped)
            # Two more scrapes, so that even the last counter increase has a point after it.
            prom.wait_scrapes(JOB, 2 + int(total(prom, f'sum_over_time(up{{job="{JOB}"}}[10m])')))
            yield prom

    def test_target_is_up_with_the_bearer_token(self, prom: Prometheus):
        (t,) = prom.targets()
        assert (t["health"], t["lastError"]) == ("up", ""), t
        (s,) = prom.query(f'up{{job="{JOB}"}}')
        assert s["value"][1] == "1"

    def test_a_query_returns_the_workload(self, prom: Prometheus, tern: TernRun):
        (info,) = prom.query(f'tern_build_info{{job="{JOB}"}}')
        assert info["metric"]["version"] == tern.version and info["value"][1] == "1", info
        accepted = {s["metric"]["protocol"]: float(s["value"][1]) for s in
                    prom.query(f'sum by (protocol) (tern_connections_accepted_total{{job="{JOB}", listener="tcp"}})')}
        assert accepted == {"3.1": 0, **tern.accepted}
        assert total(prom, f'tern_connections_refused_total{{job="{JOB}", listener="tcp", reason="client_id_invalid"}}') == 1
        assert total(prom, f'tern_tls_handshake_failures_total{{job="{JOB}", listener="tls"}}') == 1
        assert total(prom, f'tern_wills_published_total{{job="{JOB}"}}') == 1
        # In: w/0, w/1, w/2, w/retained (QoS 1), w/durable (QoS 1). Out, to the 5.0 subscriber
        # (QoS 2): those and the will (QoS 0); to the 3.1.1 one (QoS 1) the same, at most QoS 1.
        assert by_qos(prom, "tern_messages_received_total") == {"0": 1, "1": 3, "2": 1}
        assert by_qos(prom, "tern_messages_sent_total") == {"0": 2 + 2, "1": 3 + 4, "2": 1}
        assert total(prom, f'tern_sessions{{job="{JOB}", state="offline"}}') == 1
        assert total(prom, f'tern_store_commit_seconds_count{{job="{JOB}"}}') > 0

    def test_every_dashboard_query_returns_data_from_tern(self, prom: Prometheus):
        """Each query, variables substituted, returns at least one finite sample, and every
        series carries the labels its legend shows. (A histogram_quantile series may be NaN:
        a route with no request in the window has no latency.)"""
        failures = []
        for q in dashboard_queries(load_dashboard()):
            if q.where.startswith("annotation"):
                continue  # restarts: none in this run
            if conditional(q.expr):
                continue  # the Cluster row: a single node exports none of it (TestStandIn has it)
            # $job and $instance stand in regex matchers (=~): ".+" selects all (one target).
            expr = promql.substitute_grafana(q.expr, TERN_DURATIONS, value=".+")
            result = prom.query(expr)
            if not result:
                failures.append(f"{q.where}: no data for {expr}")
            elif not any(finite(s) for s in result):
                failures.append(f"{q.where}: only {[s['value'][1] for s in result]} for {expr}")
            for s in result:
                if missing := legend_labels(q.legend) - set(s["metric"]):
                    failures.append(f"{q.where}: legend {q.legend!r} but the series has no {missing}")
                    break
        assert not failures, "\n".join(failures)

    def test_alert_rules_evaluate_on_tern(self, prom: Prometheus):
        check_rules_evaluate(prom)

    def test_every_alert_names_series_tern_exports(self, prom: Prometheus):
        failures = []
        for r in prom.alerting_rules():
            for name in sorted(promql.selected(r["query"]).names - PROMETHEUS_SYNTHETIC):
                if not prom.query(f'{name}{{job="{JOB}"}}'):
                    failures.append(f"{r['name']}: no series {name} from tern")
        assert not failures, "\n".join(failures)

    def test_no_alert_on_a_healthy_tern(self, prom: Prometheus):
        check_no_alert_active(prom)

    def test_stopping_tern_makes_tern_down_pending(self, prom: Prometheus, tern: TernRun):
        # Last: stops tern for good.
        assert tern.server.terminate() == 0, tern.server.log()
        wait_pending(prom, "TernDown")


# ---------------------------------------------------------------------------------------------
# The stand-in
# ---------------------------------------------------------------------------------------------

# Grafana's $__rate_interval is at least 4 scrape intervals.
STAND_IN_DURATIONS = {k: ("5s" if "rate" in k else "30s") for k in promql.GRAFANA_DURATIONS}


class TestStandIn:
    @pytest.fixture(scope="class")
    def exporter(self, catalogue):
        with FakeExporter(catalogue) as exp:
            yield exp

    @pytest.fixture(scope="class")
    def prom(self, exporter, tmp_path_factory) -> Iterator[Prometheus]:
        with running_prometheus(tmp_path_factory.mktemp("prometheus"), JOB, f"127.0.0.1:{exporter.port}",
                                rule_files=(ALERTS,)) as prom:
            # Enough scrapes for every rate window: 4 samples of the target.
            prom.wait_scrapes(JOB, 4)
            yield prom

    def test_stand_in_exposition_passes_promtool_check_metrics(self, exporter):
        """promtool's lint (naming, units, _total) on an exposition with every catalogue name."""
        proc = subprocess.run([need_tool("promtool"), "check", "metrics"], input=exporter.exposition.render(),
                              capture_output=True, text=True, timeout=30)
        # HELP texts here are placeholders; only naming problems count.
        problems = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip() and "HELP" not in l]
        assert not problems, "\n".join(problems)

    def test_target_is_up(self, prom: Prometheus):
        (s,) = prom.query(f'up{{job="{JOB}"}}')
        assert s["value"][1] == "1"

    def test_every_dashboard_query_returns_series_with_its_legend_labels(self, prom: Prometheus):
        failures = []
        for q in dashboard_queries(load_dashboard()):
            # $job and $instance stand in regex matchers (=~) in the dashboard: ".+" selects all.
            expr = promql.substitute_grafana(q.expr, STAND_IN_DURATIONS, value=".+")
            result = prom.query(expr)
            if q.where.startswith("annotation"):
                continue  # restarts: nothing to show on a stand-in that never restarts
            if not result:
                failures.append(f"{q.where}: no data for {expr}")
                continue
            for s in result:
                missing = legend_labels(q.legend) - set(s["metric"])
                if missing:
                    failures.append(f"{q.where}: legend {q.legend!r} but the series has no {missing}: {s['metric']}")
                    break
                if not finite(s):
                    failures.append(f"{q.where}: {s['value'][1]} for {expr}")
                    break
        assert not failures, "\n".join(failures)

    def test_alert_rules_load_and_evaluate(self, prom: Prometheus):
        check_rules_evaluate(prom)

    def test_no_alert_on_a_healthy_broker(self, prom: Prometheus):
        check_no_alert_active(prom)

    def test_database_down_makes_the_alert_pending(self, prom: Prometheus, exporter):
        exporter.exposition.store_up = 0
        try:
            wait_pending(prom, "TernDatabaseUnavailable")
        finally:
            exporter.exposition.store_up = 1

    def test_target_down_makes_tern_down_pending(self, prom: Prometheus, exporter):
        # Last: stops the stand-in for good.
        exporter.stop()
        wait_pending(prom, "TernDown")
