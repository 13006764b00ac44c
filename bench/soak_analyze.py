#!/usr/bin/env python3
"""Checks of a bench/soak.sh run (standard library only): plateau, fd and thread leaks, p99
stability and probe loss. Usage: soak_analyze.py OUT_DIR. Prints the figures and one line per
check; exits 3 if a check failed. Thresholds: SOAK_RSS_PLATEAU_PCT (10), SOAK_P99_RATIO (3).
See bench/soak.sh for what each check means."""

import csv
import json
import os
import statistics
import sys


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def kv(path):
    out = {}
    with open(path) as f:
        for part in f.read().split():
            k, _, v = part.partition("=")
            out[k] = int(v)
    return out


def main(out):
    rows = list(csv.DictReader(open(os.path.join(out, "soak.csv"))))
    base = kv(os.path.join(out, "baseline.txt"))
    end = kv(os.path.join(out, "end.txt"))
    plateau_pct = float(os.environ.get("SOAK_RSS_PLATEAU_PCT", "10"))
    p99_ratio = float(os.environ.get("SOAK_P99_RATIO", "3"))
    fault_t = None
    t0 = float(open(os.path.join(out, "t0")).read())
    if os.path.exists(os.path.join(out, "fault.txt")):
        fault_t = float(open(os.path.join(out, "fault.txt")).read().split()[0]) - t0

    load = [r for r in rows if r["phase"] in ("load", "restart", "db-down")]
    settle = [r for r in rows if r["phase"] == "settle" and num(r["rss_mib"]) is not None]
    results = []

    def check(name, ok, text):
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {text}")

    if not load:
        print("no samples under load")
        return 3
    t_start, t_end = num(load[0]["t_s"]), num(load[-1]["t_s"])
    span = t_end - t_start

    def window(lo, hi, col):
        vals = [num(r[col]) for r in load if t_start + lo * span <= num(r["t_s"]) < t_start + hi * span]
        return [v for v in vals if v is not None]

    rss_all = [num(r["rss_mib"]) for r in load if num(r["rss_mib"]) is not None]
    mid, last = window(1 / 3, 2 / 3, "rss_mib"), window(2 / 3, 1.01, "rss_mib")
    in_rates = [v for v in (num(r["in_per_s"]) for r in load) if v is not None]
    out_rates = [v for v in (num(r["out_per_s"]) for r in load) if v is not None]
    print(f"samples: {len(rows)} ({len(load)} under load), load {span:.0f} s"
          + (f", fault at {fault_t:.0f} s" if fault_t is not None else ""))
    print(f"RSS MiB: min {min(rss_all):.1f}, max {max(rss_all):.1f}; middle third mean "
          f"{statistics.mean(mid):.1f}, last third mean {statistics.mean(last):.1f}, last sample {rss_all[-1]:.1f}")
    if in_rates:
        print(f"msg/s in: median {statistics.median(in_rates):.0f}, out: median {statistics.median(out_rates):.0f}")
    conns = [num(r["connections"]) for r in load if num(r["connections"]) is not None]
    print(f"connections under load: median {statistics.median(conns):.0f}, max {max(conns):.0f}")
    fds_load = [num(r["fds"]) for r in load if num(r["fds"]) is not None]
    print(f"fds under load: median {statistics.median(fds_load):.0f}, max {max(fds_load):.0f}; "
          f"baseline {base['fds']} ({base['sockets']} sockets), end {end['fds']} ({end['sockets']} sockets)")
    thr = [num(r["threads"]) for r in load if num(r["threads"]) is not None]
    print(f"threads under load: min {min(thr):.0f}, max {max(thr):.0f}; baseline {base['threads']}, end {end['threads']}")

    growth = (statistics.mean(last) - statistics.mean(mid)) / statistics.mean(mid) * 100
    check("plateau", growth <= plateau_pct,
          f"RSS last third {growth:+.1f}% against the middle third (bound {plateau_pct:g}%)")
    # Context when the plateau check fails: is the end of the run flat? (With SQLite each pooled
    # connection's page cache fills over the first ~15-20 minutes of a busy process.)
    a, b = window(0.7, 0.85, "rss_mib"), window(0.85, 0.97, "rss_mib")
    if a and b:
        print(f"      RSS over 70-85% of the load {statistics.mean(a):.1f} MiB, over 85-97% "
              f"{statistics.mean(b):.1f} MiB ({(statistics.mean(b) / statistics.mean(a) - 1) * 100:+.1f}%)")
    final = settle[-1] if settle else None
    clients_left = end.get("client_sockets", 0)
    check("fds", clients_left == 0 and end["fds"] <= base["fds"] + 18,
          f"after the settle time {end['fds']} fds ({end['sockets']} sockets, {clients_left} of them clients), "
          f"idle baseline {base['fds']} fds ({base['sockets']} sockets) (bounds: no client, fds +18)")
    if final is not None:
        check("connections", num(final["connections"]) == 0,
              f"tern_connections {final['connections']} after the settle time; sessions {final['sessions']}, "
              f"subscriptions {final['subscriptions']}, queued {final['queued']}, retained {final['retained']}, "
              f"RSS {final['rss_mib']} MiB")
    check("threads", end["threads"] <= base["threads"] + 8,
          f"{end['threads']} threads at the end, {base['threads']} at the baseline (bound +8)")

    p99s = [(num(r["t_s"]), num(r["probe_p99_ms"])) for r in load if num(r["probe_p99_ms"])]
    if fault_t is not None:
        # The fault's own windows are not latency: leave out 30 s from it.
        p99s = [(t, v) for t, v in p99s if not (fault_t - 5 <= t <= fault_t + 30)]
    n = max(3, len(p99s) // 10)
    first = statistics.median(v for _, v in p99s[:n])
    last_p = statistics.median(v for _, v in p99s[-n:])
    check("p99", last_p <= max(p99_ratio * first, first + 5.0),
          f"probe p99 median {first:.2f} ms over the first {n} windows, {last_p:.2f} ms over the last {n} "
          f"(bound max({p99_ratio:g}x, +5 ms)); worst window {max(v for _, v in p99s):.2f} ms")

    try:
        probe = json.loads(open(os.path.join(out, "probe.json")).read().strip().splitlines()[-1])
        check("loss", probe.get("lost", 1) == 0,
              f"probe: {probe.get('sent')} sent, {probe.get('acked')} acknowledged, {probe.get('received')} received, "
              f"{probe.get('lost')} lost, {probe.get('duplicates')} duplicates, {probe.get('unacked')} unacknowledged "
              f"(in flight at a failure), {probe.get('reconnects')} reconnections; latency {probe.get('latency_us')} µs")
    except (OSError, ValueError, IndexError) as e:
        check("loss", False, f"no probe result: {e}")
    loops = os.path.join(out, "loops.log")
    if os.path.exists(loops):
        lines = open(loops).read().splitlines()
        print(f"load loops: {len(lines)} tern-bench runs ended with an error (see loops.log)")
    return 0 if all(results) else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
