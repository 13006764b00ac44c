"""Self-tests of the PromQL checks, so that a pass of the dashboard and alert checks means
something: each kind of mistake they exist for is caught."""

from __future__ import annotations

import pytest

import promql
from conftest import check_expression


@pytest.mark.parametrize(
    "expr, names",
    [
        ('sum by (le) (rate(a_bucket{x="1", y!~"a|b"}[5m]))', {"a_bucket"}),
        ("sum(rate(b_total[1m])) by (job) / on (instance) group_left (v) c", {"b_total", "c"}),
        ("histogram_quantile(0.99, sum by (job, le) (rate(d_bucket[5m]))) > 0.25", {"d_bucket"}),
        ('label_replace(up, "a", "$1", "b", "(.*)")', {"up"}),
        ("max_over_time(rate(e_total[1m])[10m:1m]) offset 5m", {"e_total"}),
        ("time() - f", {"f"}),
        ("count without (instance) (g) and bool h or i unless j", {"g", "h", "i", "j"}),
    ],
)
def test_selected_names(expr, names):
    assert promql.selected(expr).names == names


def test_selector_without_a_name_is_a_problem():
    assert promql.selected('{job="tern"}').problems


def test_grafana_substitution():
    out = promql.substitute_grafana('rate(x{a=~"$instance", b="${job}"}[$__rate_interval])')
    assert out == 'rate(x{a=~"tern", b="tern"}[1m])'
    with pytest.raises(ValueError):
        promql.substitute_grafana("x[$__unknown_interval_fn$]")


def test_label_values():
    assert promql.label_values_selector('label_values(tern_build_info{job=~"$job"}, instance)') \
        == 'tern_build_info{job=~"$job"}'
    assert promql.label_values_selector("label_values(job)") is None


@pytest.mark.parametrize(
    "expr, complaint",
    [
        ("tern_no_such_metric", "not a metric tern exports"),
        ("tern_store_commit_seconds", "a histogram"),
        ("rate(tern_connections[1m])", "need a counter"),
        ('tern_connections{reason="x"}', "has no label reason"),
        ("sum by (reason) (tern_connections)", "grouping by reason"),
        ("histogram_quantile(0.99, sum by (route) (rate(tern_admin_request_duration_seconds_bucket[1m])))",
         "drops le"),
        ('{__name__="tern_connections"}', "without a metric name"),
        ("up", "not a metric tern exports"),  # only alerts may use Prometheus' own series
    ],
)
def test_check_expression_catches(expr, complaint, catalogue):
    problems = check_expression(expr, catalogue, allow_synthetic=False)
    assert any(complaint in p for p in problems), problems


def test_check_expression_accepts(catalogue):
    expr = ('histogram_quantile(0.5, sum by (le, route) '
            '(rate(tern_admin_request_duration_seconds_bucket{route="/healthz"}[1m]))) '
            '+ sum by (listener) (tern_connections) + rate(process_cpu_seconds_total[1m])')
    assert check_expression(expr, catalogue, allow_synthetic=False) == []
