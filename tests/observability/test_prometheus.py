"""prometheus/: the Compose stack's Prometheus config and the alerting rules.

promtool checks the config and the rules and runs the rules' unit tests; every alert
expression must select only metrics tern exports, with labels they have.
"""

from __future__ import annotations

import pytest

from conftest import (
    ALERTS,
    ALERTS_TEST,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    alert_rules,
    assert_ok,
    check_expression,
    load_yaml,
    promtool,
)

REQUIRED_ALERTS = {
    "TernDown", "TernDatabaseUnavailable", "TernHighDropRate", "TernAuthFailureSpike",
    "TernCommitLatencyHigh", "TernConnectionsNearLimit",
}


def test_promtool_check_config():
    # rule_files is relative to the config file's directory, so the config checks out as is,
    # in the repo and in the container (which mounts prometheus/ at /etc/prometheus).
    assert_ok(promtool("check", "config", str(PROMETHEUS_CONFIG)))


def test_config_loads_exactly_the_checked_rules_file():
    cfg = load_yaml(PROMETHEUS_CONFIG)
    rule_files = [(PROMETHEUS_CONFIG.parent / f).resolve() for f in cfg.get("rule_files", [])]
    assert rule_files == [ALERTS.resolve()]


def test_config_scrapes_tern():
    cfg = load_yaml(PROMETHEUS_CONFIG)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert "tern" in jobs, "TernDown watches up{job=\"tern\"}: the scrape job must be named tern"
    tern = jobs["tern"]
    assert tern.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in tern["static_configs"] for t in sc["targets"]]
    assert targets == ["tern:8080"]


def test_promtool_check_rules():
    assert_ok(promtool("check", "rules", str(ALERTS)))


def test_promtool_unit_tests():
    # rule_files in alerts.test.yml is relative to the test file.
    assert_ok(promtool("test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS_DIR))


def test_unit_tests_cover_the_required_alerts():
    doc = load_yaml(ALERTS_TEST)
    tested = {t["alertname"] for case in doc["tests"] for t in case.get("alert_rule_test", [])}
    for name in ("TernDown", "TernDatabaseUnavailable", "TernConnectionsNearLimit"):
        assert name in tested
        # Each has a firing and a not-firing evaluation.
        evals = [t for case in doc["tests"] for t in case.get("alert_rule_test", []) if t["alertname"] == name]
        assert any(t.get("exp_alerts") for t in evals), f"{name}: no case where it fires"
        assert any(not t.get("exp_alerts") for t in evals), f"{name}: no case where it stays quiet"


def test_required_alerts_and_their_metadata():
    rules = alert_rules()
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert REQUIRED_ALERTS <= set(names), f"missing: {REQUIRED_ALERTS - set(names)}"
    for r in rules:
        assert "alert" in r, f"not an alerting rule: {r}"
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r.get("for"), f"{r['alert']}: no for: duration, a single bad scrape would page"
        assert r["annotations"].get("summary") and r["annotations"].get("description"), r["alert"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r.get("alert", "?"))
def test_alert_expression_names_only_exported_metrics(rule, catalogue):
    problems = check_expression(rule["expr"], catalogue, allow_synthetic=True)
    assert not problems, f"{rule['alert']}: " + "; ".join(problems)
