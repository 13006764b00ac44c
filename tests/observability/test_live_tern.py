"""tern's own `GET /metrics` (issue 18), scraped from the real binary after a known workload.

One broker for the module, fresh (nothing ran on it before), with device authentication
(passwords, no anonymous access), ACL rules with a default of deny, a queue limit of
QUEUE_LIMIT messages, $SYS off (its publications would count as messages) and the failure
backoff's default of 3 free failures. Devices and rules are provisioned with the CLI (`tern
device add`, `tern acl add`) in its SQLite file before it starts. The workload:

- N = 6 successful connects: 3 MQTT 5.0 clients that stay connected (a subscriber, a
  publisher and a raw-socket client), and 2 MQTT 3.1.1 and 1 MQTT 3.1 client that connect
  and DISCONNECT;
- M messages of each QoS 0, 1 and 2 from the publisher to the subscriber, each received
  before the next is sent;
- one PUBLISH the ACL denies (QoS 1 on 5.0: PUBACK 0x87) and one SUBSCRIBE it denies
  (SUBACK 0x87);
- one queue-full drop, exactly: the raw client says Receive Maximum 1, subscribes at QoS 1
  and never acknowledges. Its first message goes in flight (read, not acknowledged); the
  next QUEUE_LIMIT wait in its queue; one more finds the queue full and, by the default
  `drop_oldest` policy of a clean session, evicts the oldest: one drop, nothing more sent;
- K = 4 CONNECTs with a wrong password, last: the first three are free failures, the
  fourth is slowed down by the backoff (one backoff event);
- a GET /healthz on the admin API (the admin request metrics have no series before one).

Then every counter and gauge the workload determines is checked for its exact value (and
every other reason, action or method for 0), the live scrape must pass `promtool check
metrics`, and it must match the catalogue (metrics.txt) family by family: type, labels,
histogram shape, nothing more, nothing less. A broker with `admin.metrics_token` answers
401 without the token and 200 with it.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from conftest import (
    CATALOGUE,
    HISTOGRAM_SUFFIXES,
    LABEL_VALUES,
    TARGET_LABELS,
    Family,
    need_tool,
    wait_for,
)
from exposition import Scrape, fetch, scrape
from mqttutil import PahoClient
from rawmqtt import V5, V31, V311, RawClient, connack_refused
from ternserver import TernServer, clean_env, tern_bin

M = 3  # messages per QoS level
K = 4  # CONNECTs with a wrong password
QUEUE_LIMIT = 2  # limits.max_queued_messages
MAX_CONNECTIONS = 50  # limits.max_connections, exported as tern_connection_limit
FREE_FAILURES = 3  # auth.backoff.free_failures (the default): the 4th failure is slowed down
LISTENER = "tcp"  # the implicit listener on mqtt_addr (ListenerSpec::default_tcp)
SETTLE = 10.0  # connections flush their counters after each event: poll this long at most

# Client id (= user name) and protocol level of each device.
DEVICES = {
    "sub5": V5, "pub5": V5, "raw5": V5,
    "old311a": V311, "old311b": V311, "old31": V31,
}
TOPIC = "m/t"
QUEUE_TOPIC = "qf/t"
DENIED_TOPIC = "deny/t"
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = {V5: 0x86, V311: 4}  # 3.1.1 return code 4: bad user name or password


def password(client_id: str) -> str:
    return f"{client_id}-secret-password"


def tern_cli(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    proc = subprocess.run([str(tern_bin()), *args], input=stdin, capture_output=True, text=True,
                          env=clean_env(env), timeout=60)
    assert proc.returncode == 0, f"tern {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def tern_version() -> str:
    """The version `tern --version` prints ("tern 0.1.0"): tern_build_info's label."""
    return tern_cli("--version", env={}).split()[-1]


# ---------------------------------------------------------------------------------------------
# Expected values
# ---------------------------------------------------------------------------------------------


@dataclass
class Expected:
    """Exact values of series, and families whose every other series must be 0."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    exhaustive: set[str] = field(default_factory=set)
    positive: set[str] = field(default_factory=set)

    def put(self, name: str, value: float, **labels: str) -> None:
        self.values[(name, frozenset(labels.items()))] = value

    def all_of(self, name: str, values: dict[str, float], label: str, **labels: str) -> None:
        """`name` by `label`: these values, every other value of the label 0."""
        self.exhaustive.add(name)
        for v, n in values.items():
            self.put(name, n, **labels, **{label: v})

    def problems(self, s: Scrape) -> list[str]:
        out = []
        for (name, labels), want in sorted(self.values.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
            got = s.value(name, **dict(labels))
            if got is None and want == 0:
                continue  # a zero series may be created on first use (checked elsewhere)
            if got != want:
                out.append(f"{name}{dict(sorted(labels))}: {got}, expected {want}")
        for name in sorted(self.exhaustive):
            for smp in s.samples(name):
                if (name, smp.key()) not in self.values and smp.value != 0:
                    out.append(f"{name}{smp.labels}: {smp.value}, expected 0 (not in the workload)")
        for name in sorted(self.positive):
            if not s.total(name) > 0:
                out.append(f"{name}: {s.total(name)}, expected > 0")
        return out


def expected_after_workload(version: str) -> Expected:
    e = Expected()
    l = {"listener": LISTENER}
    v5 = sum(1 for v in DEVICES.values() if v == V5)
    e.all_of("tern_connections_accepted_total", {"5.0": v5, "3.1.1": 2, "3.1": 1}, "protocol", **l)
    # Gauges: the three 5.0 clients are still connected.
    e.all_of("tern_connections", {"5.0": v5, "3.1.1": 0, "3.1": 0}, "protocol", **l)
    e.all_of("tern_connections_refused_total", {"bad_credentials": K}, "reason", **l)
    e.all_of("tern_disconnects_total", {"client": 3}, "reason", **l)
    e.put("tern_tls_handshake_failures_total", 0, **l)
    # PUBLISH packets in: M per QoS to TOPIC, the denied one (QoS 1), and QUEUE_LIMIT + 2 to
    # QUEUE_TOPIC (QoS 1). Out: M per QoS to the subscriber, one (QoS 1) to the raw client.
    queue_publishes = QUEUE_LIMIT + 2
    e.all_of("tern_messages_received_total", {"0": M, "1": M + 1 + queue_publishes, "2": M}, "qos")
    e.all_of("tern_messages_sent_total", {"0": M, "1": M + 1, "2": M}, "qos")
    # Routed to a matching session, counted at routing time: the evicted one included.
    e.put("tern_deliveries_total", 3 * M + queue_publishes)
    e.all_of("tern_messages_dropped_total", {"queue_full": 1, "acl": 1}, "reason")
    e.all_of("tern_acl_denials_total", {"publish": 1, "subscribe": 1}, "action")
    e.exhaustive.add("tern_auth_failures_total")
    e.put("tern_auth_failures_total", K, method="password", reason="bad_credentials")
    e.put("tern_auth_backoff_total", K - FREE_FAILURES)
    e.put("tern_wills_published_total", 0)
    e.all_of("tern_sessions", {"online": v5, "offline": 0}, "state")
    e.put("tern_subscriptions", 2)  # TOPIC (subscriber) and QUEUE_TOPIC (raw client)
    e.put("tern_queued_messages", QUEUE_LIMIT)  # the raw client's full queue
    e.put("tern_inflight_messages", 1)  # its unacknowledged message
    e.put("tern_retained_messages", 0)
    e.put("tern_retained_bytes", 0)
    e.put("tern_connection_limit", MAX_CONNECTIONS)
    e.put("tern_pending_connections", 0)  # every handshake of the workload completed
    e.all_of("tern_throttled_total", {}, "kind")  # no rate limit is on by default
    e.put("tern_store_up", 1)
    e.put("tern_store_commit_failures_total", 0)
    e.put("tern_store_deferred_ops", 0)
    e.put("tern_tap_viewers", 0)
    e.put("tern_tap_dropped_total", 0)
    e.put("tern_topics_tracked", 0)  # limits.topic_stats_capacity is 0 by default
    e.exhaustive.add("tern_build_info")
    e.put("tern_build_info", 1, version=version)
    e.positive |= {"tern_received_bytes_total", "tern_sent_bytes_total", "tern_queued_bytes",
                   "process_resident_memory_bytes", "process_open_fds", "process_threads",
                   "process_start_time_seconds", "process_max_fds"}
    return e


# ---------------------------------------------------------------------------------------------
# The broker and its workload
# ---------------------------------------------------------------------------------------------


@dataclass
class Live:
    server: TernServer
    base: str  # http://host:port of the admin API
    version: str
    clients: list = field(default_factory=list)
    scrape: Scrape | None = None  # the settled scrape after the workload


def provision(env: dict[str, str]) -> None:
    for client_id in DEVICES:
        tern_cli("device", "add", "--client-id", client_id, "--username", client_id,
                 "--password-stdin", env=env, stdin=password(client_id) + "\n")
    tern_cli("acl", "add", "--allow", "--action", "all", "--topic", "m/#", env=env)
    tern_cli("acl", "add", "--allow", "--action", "all", "--topic", "qf/#", env=env)
    # DENIED_TOPIC matches no rule: denied by auth.acl_default = "deny".


def paho(live: Live, client_id: str) -> PahoClient:
    c = PahoClient(live.server.port, "v5", client_id)
    c.client.username_pw_set(client_id, password(client_id))
    live.clients.append(c)
    return c


def raw(live: Live, client_id: str, **connect) -> RawClient:
    c = RawClient(live.server.port, DEVICES[client_id])
    live.clients.append(c)
    _, code = c.connect(client_id, client_id, password(client_id), **connect)
    assert code == 0, f"{client_id}: CONNECT refused with {code:#x}"
    return c


def run_workload(live: Live) -> None:
    port = live.server.port
    # N connects: three 5.0 clients that stay, two 3.1.1 and one 3.1 that leave.
    sub = paho(live, "sub5").connect()
    sub.subscribe(TOPIC, 2)
    pub = paho(live, "pub5").connect()
    rc = raw(live, "raw5", receive_maximum=1)
    for client_id in ("old311a", "old311b", "old31"):
        raw(live, client_id).disconnect()

    # M messages per QoS, one at a time: no queue ever holds more than one of them.
    for qos in (0, 1, 2):
        for i in range(M):
            pub.publish(TOPIC, f"qos{qos}-{i}", qos=qos)
            got = sub.messages.expect_one()
            assert (got.topic, got.qos, got.payload) == (TOPIC, qos, f"qos{qos}-{i}".encode())

    # The ACL: a publish and a subscription nobody may make.
    rc.publish(DENIED_TOPIC, b"denied", qos=1, packet_id=1)
    assert rc.puback_code(1) == NOT_AUTHORIZED
    assert rc.subscribe(2, DENIED_TOPIC, 1) == NOT_AUTHORIZED

    # One queue-full drop: one message in flight (never acknowledged), QUEUE_LIMIT queued
    # behind the window of 1, and one more.
    assert rc.subscribe(3, QUEUE_TOPIC, 1) == 1
    pub.publish(QUEUE_TOPIC, "qf-0", qos=1)
    assert rc.read_publish() == (QUEUE_TOPIC, 1, b"qf-0")
    for i in range(1, QUEUE_LIMIT + 2):
        pub.publish(QUEUE_TOPIC, f"qf-{i}", qos=1)  # acknowledged: a clean session drops
    assert rc.nothing_pending(), "the raw client got a message past its Receive Maximum of 1"

    # K wrong passwords, last (a successful CONNECT after them would be slowed down too).
    for i in range(K):
        version = V5 if i % 2 == 0 else V311
        code = connack_refused(port, version, "old311a", "old311a", "not-the-password")
        assert code == BAD_CREDENTIALS[version], f"wrong password {i}: CONNACK {code:#x}"

    # An admin API request, so that its request counter and latency histogram have a series.
    assert requests.get(f"{live.base}/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    tmp: Path = tmp_path_factory.mktemp("tern-metrics")
    db = {"TERN_DATABASE__URL": f"sqlite://{tmp / 'tern.db'}"}
    provision(db)
    server = TernServer(env={
        **db,
        "TERN_ALLOW_ANONYMOUS": "false",
        "TERN_AUTH__ACL_DEFAULT": "deny",
        "TERN_AUTH__BACKOFF__FREE_FAILURES": str(FREE_FAILURES),
        "TERN_LIMITS__MAX_QUEUED_MESSAGES": str(QUEUE_LIMIT),
        "TERN_LIMITS__QUEUE_FULL_POLICY": "drop_oldest",
        "TERN_LIMITS__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "TERN_SYS__INTERVAL": "0",
    })
    live = Live(server, server.admin_url(), tern_version())
    try:
        run_workload(live)
        expected = expected_after_workload(live.version)
        last: list[Scrape] = []

        def settled():
            last[:] = [scrape(live.base)]
            return expected.problems(last[0]) or True

        try:
            wait_for("the counters to settle", settled, deadline=SETTLE, interval=0.1)
        except pytest.fail.Exception:
            pass  # test_counters_after_a_known_workload reports what differs
        live.scrape = last[0]
        yield live
    finally:
        for c in live.clients:
            c.close()
        server.terminate()
        server.join_logs()
        server.cleanup()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_counters_after_a_known_workload(live: Live):
    problems = expected_after_workload(live.version).problems(live.scrape)
    assert not problems, "/metrics after the workload:\n" + "\n".join(problems)


def test_metrics_is_prometheus_text_without_a_token_by_default(live: Live):
    status, ctype, body = fetch(live.base)
    assert status == 200, body
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype


def test_live_scrape_passes_promtool_check_metrics(live: Live):
    proc = subprocess.run([need_tool("promtool"), "check", "metrics"], input=live.scrape.text,
                          capture_output=True, text=True, timeout=30)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not out, f"promtool check metrics (exit {proc.returncode}):\n{out}"


def histogram_problems(name: str, fam) -> list[str]:
    """Buckets ascending to +Inf, cumulative, +Inf = _count, a _sum: per label set."""
    out = []
    groups: dict[frozenset, dict[str, object]] = {}
    for s in fam.samples:
        base = frozenset((k, v) for k, v in s.labels.items() if k != "le")
        g = groups.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if s.name == name + "_bucket":
            g["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name == name + "_sum":
            g["sum"] = s.value
        elif s.name == name + "_count":
            g["count"] = s.value
    for base, g in groups.items():
        where = f"{name}{dict(base)}"
        buckets = g["buckets"]
        if not buckets or buckets[-1][0] != math.inf:
            out.append(f"{where}: no le=\"+Inf\" bucket last")
            continue
        les = [le for le, _ in buckets]
        counts = [c for _, c in buckets]
        if les != sorted(les) or counts != sorted(counts):
            out.append(f"{where}: buckets not ascending and cumulative: {buckets}")
        if g["count"] != counts[-1]:
            out.append(f"{where}: _count {g['count']} != +Inf bucket {counts[-1]}")
        if g["sum"] is None:
            out.append(f"{where}: no _sum")
    return out


def test_live_scrape_matches_the_catalogue(live: Live, catalogue: dict[str, Family]):
    """Every family of metrics.txt with its type and labels, histograms as _bucket/_sum/
    _count, and nothing else: the dashboard and alert checks trust the catalogue."""
    got = live.scrape.families
    problems = []
    for name, fam in catalogue.items():
        g = got.get(name)
        if g is None and fam.only is not None:
            continue  # not this configuration's (test_conditional_families_are_absent)
        if g is None:
            problems.append(f"{name}: not exported (metrics.txt lists it)")
            continue
        if g.type != fam.type:
            problems.append(f"{name}: exported as a {g.type}, metrics.txt says {fam.type}")
        if not g.help.strip():
            problems.append(f"{name}: no HELP text")
        if not g.samples:
            problems.append(f"{name}: no samples")
        names = {s.name for s in g.samples}
        wanted = {name + s for s in HISTOGRAM_SUFFIXES} if fam.type == "histogram" else {name}
        if names != wanted:
            problems.append(f"{name}: series {sorted(names)}, expected {sorted(wanted)}")
        for s in g.samples:
            labels = set(s.labels) - ({"le"} if s.name.endswith("_bucket") and fam.type == "histogram" else set())
            if labels & TARGET_LABELS:
                problems.append(f"{s.name}{s.labels}: {labels & TARGET_LABELS} is Prometheus' to add")
            if labels != fam.labels:
                problems.append(f"{s.name}{s.labels}: labels {sorted(labels)}, metrics.txt says "
                                f"{sorted(fam.labels) or '-'}")
                break
        if fam.type == "histogram":
            problems += histogram_problems(name, g)
    for name in sorted(set(got) - set(catalogue)):
        problems.append(f"{name} ({got[name].type}): exported but not in {CATALOGUE.name}")
    assert not problems, "\n".join(problems)


def test_conditional_families_are_absent(live: Live, catalogue: dict[str, Family]):
    """A single node, not clustered, exports none of the families metrics.txt marks
    `cluster` (docs/observability.md: they appear in cluster mode only)."""
    exported = sorted(n for n, fam in catalogue.items() if fam.only == "cluster" and n in live.scrape.families)
    assert not exported, f"a single node exports cluster families: {exported}"


def test_label_values_are_bounded_and_complete(live: Live, catalogue: dict[str, Family]):
    """The bounded labels take exactly their documented values, each from the start (0
    before the first event, so that rate() sees it); listener is the listener's name; no
    label carries a client id, user name or topic."""
    s = live.scrape
    problems = []
    for (name, label), values in LABEL_VALUES.items():
        if catalogue[name].only is not None and not s.samples(name):
            continue  # a family of another configuration (cluster)
        seen = {smp.labels.get(label) for smp in s.samples(name)}
        if missing := set(values) - seen:
            problems.append(f"{name}: no series with {label} = {sorted(missing)}")
        if extra := seen - set(values):
            problems.append(f"{name}: {label} = {sorted(extra)}, not a documented value")
    for fam in s.families.values():
        for smp in fam.samples:
            if "listener" in smp.labels and smp.labels["listener"] != LISTENER:
                problems.append(f"{smp.name}{smp.labels}: listener is not {LISTENER!r}")
            leaked = set(smp.labels.values()) & (set(DEVICES) | {TOPIC, QUEUE_TOPIC, DENIED_TOPIC})
            if leaked:
                problems.append(f"{smp.name}{smp.labels}: carries {leaked}")
    assert not problems, "\n".join(problems)


def test_metrics_token(tmp_path):
    """With admin.metrics_token set, /metrics wants `Authorization: Bearer <token>`."""
    token = "metrics-token-for-the-test-0123456789"
    server = TernServer(env={
        "TERN_DATABASE__URL": f"sqlite://{tmp_path / 'tern.db'}",
        "TERN_ADMIN__METRICS_TOKEN": token,
        "TERN_SYS__INTERVAL": "0",
    })
    try:
        base = server.admin_url()
        assert fetch(base)[0] == 401, "no token"
        assert fetch(base, token="not-" + token)[0] == 401, "a wrong token"
        r = requests.get(f"{base}/metrics", headers={"Authorization": f"Basic {token}"}, timeout=10)
        assert r.status_code == 401, "the token under another scheme"
        status, _, body = fetch(base, token=token)
        assert status == 200, body
        assert Scrape(body).value("tern_build_info", version=tern_version()) == 1
    finally:
        server.terminate()
        server.join_logs()
        server.cleanup()
