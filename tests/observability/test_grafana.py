"""grafana/: the dashboard and its provisioning.

The dashboard must be valid JSON in Grafana's shape, every panel must query something, every
query must parse (promtool) and name only metrics tern exports, with labels they have.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml

import promql
from conftest import (
    DASHBOARD,
    GRAFANA_DIR,
    alert_rules,
    assert_ok,
    check_expression,
    dashboard_panels,
    dashboard_queries,
    load_dashboard,
    load_yaml,
    promtool,
    resolve,
)

PROVISIONED_UID = "prometheus"
DS_VARIABLE = "DS_PROMETHEUS"
ROWS = ["Overview", "Broker", "Storage", "Cluster", "Admin API", "Process"]


@pytest.fixture(scope="module")
def dash() -> dict:
    return load_dashboard()


def test_dashboard_is_a_grafana_dashboard(dash):
    assert dash["title"] and dash["uid"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"])
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert isinstance(dash["panels"], list) and dash["panels"]


def test_rows_in_order(dash):
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ROWS


def test_panel_ids_unique_and_layout_sane(dash):
    panels = dashboard_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"panel {p['title']!r} is wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps panel id {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


def test_every_panel_has_a_query_and_the_datasource(dash):
    for p in dashboard_panels(dash):
        if p["type"] == "row":
            continue
        assert p.get("title"), f"panel id {p['id']} has no title"
        assert p["datasource"] == {"type": "prometheus", "uid": "${%s}" % DS_VARIABLE}, p["title"]
        targets = p.get("targets") or []
        assert targets, f"panel {p['title']!r} has no query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"panel {p['title']!r}: duplicate refIds"
        for t in targets:
            assert t.get("expr", "").strip(), f"panel {p['title']!r} target {t['refId']}: empty expr"
            assert t.get("datasource", p["datasource"]) == p["datasource"], p["title"]


def test_datasource_variable_defaults_to_the_provisioned_uid(dash):
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables[DS_VARIABLE]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == PROVISIONED_UID
    # Variables other than the data source use it too.
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${%s}" % DS_VARIABLE, v["name"]


def test_rate_windows_follow_the_scrape_interval(dash):
    for q in dashboard_queries(dash):
        for window in re.findall(r"\[([^\]]+)\]", q.expr):
            assert window in ("$__rate_interval", "1m") or re.fullmatch(r"\d+[smh]", window), \
                f"{q.where}: range [{window}]"
        if re.search(r"\b(rate|increase|irate)\(", q.expr):
            assert "[$__rate_interval]" in q.expr or "[1m]" in q.expr, f"{q.where}: {q.expr}"


def _queries():
    return dashboard_queries(load_dashboard())


@pytest.mark.parametrize("query", _queries(), ids=lambda q: q.where)
def test_query_names_only_exported_metrics(query, catalogue):
    expr = promql.substitute_grafana(query.expr)
    problems = check_expression(expr, catalogue, allow_synthetic=False)
    assert not problems, f"{query.where}: {query.expr}\n  " + "\n  ".join(problems)


def test_legends_use_labels_the_query_keeps(dash, catalogue):
    """{{label}} in a legend must survive the query's aggregation, else the legend is blank."""
    for q in dashboard_queries(dash):
        wanted = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", q.legend))
        if not wanted:
            continue
        sel = promql.selected(promql.substitute_grafana(q.expr))
        aggregated = re.search(r"\b(sum|min|max|avg|count|group|stddev|stdvar|quantile)\s*(by|without|\()",
                               q.expr) is not None
        if aggregated:
            kept = sel.grouping
        else:
            kept = set().union(*(resolve(n, catalogue).labels for n in sel.names))
        assert wanted <= kept, f"{q.where}: legend {q.legend!r} uses {wanted - kept}, not kept by {q.expr}"


def test_every_expression_parses():
    """Every dashboard query and alert expression, as recording rules: promtool parses them."""
    rules = []
    for i, q in enumerate(_queries()):
        rules.append({"record": f"dashboard:query_{i}", "expr": promql.substitute_grafana(q.expr)})
    for r in alert_rules():
        rules.append({"record": f"alert:{r['alert']}", "expr": r["expr"]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "expressions.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "parse", "rules": rules}]}))
        proc = promtool("check", "rules", str(path))
    assert_ok(proc)
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_dashboard_shows_every_exported_metric(dash, catalogue):
    """A metric tern exports and no panel shows is either missing from the dashboard or not
    worth exporting."""
    shown = set()
    for q in dashboard_queries(dash):
        for n in promql.selected(promql.substitute_grafana(q.expr)).names:
            s = resolve(n, catalogue)
            if s:
                shown.add(s.family.name)
    missing = sorted(set(catalogue) - shown)
    assert not missing, f"no panel shows {missing}"


# --------------------------------------------------------------------------- provisioning


def test_datasource_provisioning():
    doc = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["uid"] == PROVISIONED_UID
    assert ds["url"] == "http://prometheus:9090"
    assert ds["access"] == "proxy"


def test_dashboard_provisioning():
    doc = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "tern.yml")
    assert doc["apiVersion"] == 1
    (prov,) = doc["providers"]
    assert prov["type"] == "file"
    assert prov["options"]["path"].startswith("/")
    # Where that path comes from is checked against docker/compose.yaml in test_compose.py.


def test_only_the_tested_dashboard_is_provisioned():
    assert sorted(p.name for p in (GRAFANA_DIR / "dashboards").iterdir()) == [DASHBOARD.name]
