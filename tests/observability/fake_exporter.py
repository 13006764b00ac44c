"""A stand-in for tern's /metrics, made from metrics.txt: every family with every label
combination the catalogue implies, counters growing at fixed rates, histograms filling.

It lets a real Prometheus run the dashboard's queries and the alert rules on every series
of every label value at once, which a short run of tern cannot show (test_live_prometheus.py's
TestTern does the same against the real binary). `healthy` data trips no alert;
`store_up = 0` trips TernDatabaseUnavailable.
"""

from __future__ import annotations

import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import LABEL_VALUES, Family

# Values of the labels that take configured or open-ended values (LABEL_VALUES in
# conftest.py has the bounded ones, shared with the live checks of tern itself).
STAND_IN_VALUES: dict[str, list[str]] = {
    "listener": ["tcp", "tls", "ws"],
    "version": ["0.1.0"],
    "route": ["/healthz", "/api/v1/devices/{client_id}", "/api/v1/stream"],
    "status": ["200", "401", "404"],
    "method": ["GET", "POST"],  # the admin API's (tern_auth_failures_total's is in LABEL_VALUES)
    "node": ["tern-1", "tern-2", "tern-3"],  # cluster.node_id of the cluster's nodes
}
BUCKETS = {
    "tern_store_commit_seconds": [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    "tern_store_batch_ops": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
    "tern_admin_request_duration_seconds": [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
}
# Per-second rates of counters where the value matters for the alerts: a healthy broker.
RATES = {
    "tern_deliveries_total": 1000.0,
    "tern_messages_dropped_total": 0.01,
    "tern_auth_failures_total": 0.01,
    "tern_store_commit_failures_total": 0.0,
}
GAUGES = {
    "tern_build_info": 1,
    "tern_connection_limit": 100000,
    "tern_store_up": 1,
    "process_max_fds": 1048576,
}


def label_sets(fam: Family) -> list[dict[str, str]]:
    names = sorted(fam.labels)
    values = [LABEL_VALUES.get((fam.name, n)) or STAND_IN_VALUES[n] for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def fmt_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


class Exposition:
    def __init__(self, catalogue: dict[str, Family]):
        self.catalogue = catalogue
        self.start = time.time()
        self.store_up = 1

    def render(self) -> str:
        t = time.time() - self.start + 1.0
        out: list[str] = []
        for i, fam in enumerate(self.catalogue.values()):
            out.append(f"# HELP {fam.name} Stand-in for tern's {fam.name}.")
            out.append(f"# TYPE {fam.name} {fam.type}")
            for j, labels in enumerate(label_sets(fam)):
                lab = fmt_labels(labels)
                if fam.type == "gauge":
                    if fam.name == "tern_store_up":
                        v = self.store_up
                    elif fam.name == "process_start_time_seconds":
                        v = round(self.start)
                    else:
                        v = GAUGES.get(fam.name, 10 + i + j)
                    out.append(f"{fam.name}{lab} {v}")
                elif fam.type == "counter":
                    rate = RATES.get(fam.name, 1.0 + j)
                    out.append(f"{fam.name}{lab} {rate * t:.3f}")
                else:
                    bounds = BUCKETS[fam.name]
                    per_s = 50.0
                    total = per_s * t
                    # Observations spread over the lower half of the buckets.
                    half = len(bounds) // 2
                    for k, le in enumerate(bounds):
                        frac = min(1.0, (k + 1) / half)
                        out.append(f"{fam.name}_bucket{fmt_labels({**labels, 'le': str(le)})} {total * frac:.3f}")
                    out.append(f"{fam.name}_bucket{fmt_labels({**labels, 'le': '+Inf'})} {total:.3f}")
                    out.append(f"{fam.name}_sum{lab} {total * bounds[half // 2]:.3f}")
                    out.append(f"{fam.name}_count{lab} {total:.3f}")
        return "\n".join(out) + "\n"


class FakeExporter:
    """Serves an Exposition at http://127.0.0.1:PORT/metrics in a thread."""

    def __init__(self, catalogue: dict[str, Family]):
        self.exposition = Exposition(catalogue)
        exposition = self.exposition

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = exposition.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeExporter:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def __exit__(self, *exc) -> None:
        self.stop()
