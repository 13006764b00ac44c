"""Just enough PromQL lexing to find the metric names an expression selects.

Syntax errors are promtool's job (the tests feed every expression to `promtool check rules`);
this only has to be right on expressions that parse. It walks the tokens and reports every
identifier that is a metric name: not a function or aggregation (followed by "("), not a
keyword, not a label name inside {...}, by (...), without (...), on (...), ignoring (...),
group_left (...) or group_right (...), and not inside a string, a duration or [range].

Grafana's variables ($__rate_interval, $job, ${instance}...) are substituted first by
`substitute_grafana`, so that promtool and a real Prometheus can run the expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Words that are never metric names when they stand where a selector could.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "atan2", "inf", "nan",
}
# Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregation operators: "sum by (le) (x)" puts the label list between operator and "(".
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
# Functions whose argument must be a counter (or a histogram's _bucket/_sum/_count).
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}

TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|[0-9][0-9a-zA-Z_.]*|\.[0-9][0-9eE+\-]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>[(){}\[\],@])
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=])
    """,
    re.VERBOSE,
)


@dataclass
class Selected:
    """What an expression selects: metric names, and the functions each one is wrapped in."""

    names: set[str] = field(default_factory=set)
    # (metric name, enclosing function names, outermost first)
    uses: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    # (metric name, label names its matchers use), one per selector with matchers.
    matchers: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    # Label names of every by/without/on/ignoring/group_left/group_right list.
    grouping: set[str] = field(default_factory=set)
    # Problems that are not syntax errors, e.g. a selector with no metric name.
    problems: list[str] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot lex PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind != "ws":
            out.append((kind, m.group()))
    return out


def _labels_in(tokens, start, end):
    """Label names in tokens[start:end]: identifiers of a label list, or the left-hand
    sides of matchers (name="value")."""
    return {t for k, t in tokens[start:end] if k == "ident"}


def _skip_until(tokens, i, closing):
    """Index just past the token `closing` that ends the group opened at tokens[i - 1]."""
    while i < len(tokens) and tokens[i][1] != closing:
        i += 1
    if i == len(tokens):
        raise ValueError(f"unclosed group, expected {closing!r}")
    return i + 1


def selected(expr: str) -> Selected:
    tokens = tokenize(expr)
    result = Selected()
    stack: list[str | None] = []  # for each open "(": the function it calls, or None
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident":
            low = text.lower()
            if low in LABEL_LIST_KEYWORDS and nxt == "(":
                end = _skip_until(tokens, i + 2, ")")
                result.grouping |= _labels_in(tokens, i + 2, end - 1)
                i = end
                continue
            if low in KEYWORDS:
                i += 1
                continue
            if low in AGGREGATIONS and nxt is not None and nxt.lower() in ("by", "without"):
                # sum by (le) (...): skip the label list, then the call as below.
                j = _skip_until(tokens, i + 3, ")")
                result.grouping |= _labels_in(tokens, i + 3, j - 1)
                if j >= len(tokens) or tokens[j][1] != "(":
                    raise ValueError(f"expected ( after {text} {nxt} (...) in {expr!r}")
                stack.append(text)
                i = j + 1
                continue
            if nxt == "(":  # a function or an aggregation
                stack.append(text)
                i += 2
                continue
            result.names.add(text)
            result.uses.append((text, tuple(f for f in stack if f)))
            i += 1
            if nxt == "{":
                end = _skip_until(tokens, i + 1, "}")
                result.matchers.append((text, frozenset(_labels_in(tokens, i + 1, end - 1))))
                i = end
            continue
        if text == "{":  # a selector without a metric name before its matchers
            end = _skip_until(tokens, i + 1, "}")
            result.problems.append(
                "selector without a metric name: "
                + " ".join(t for _, t in tokens[i:end])
            )
            i = end
            continue
        if text == "[":
            i = _skip_until(tokens, i + 1, "]")
            continue
        if text == "(":
            stack.append(None)
        elif text == ")":
            if stack:
                stack.pop()
        i += 1
    return result


GRAFANA_DURATIONS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "1m",
    "${__interval}": "1m",
    "$__range": "1h",
    "${__range}": "1h",
}


def substitute_grafana(expr: str, durations: dict[str, str] | None = None,
                       value: str = "tern") -> str:
    """Replace Grafana's built-in interval variables by durations, and any other template
    variable ($name, ${name}, ${name:fmt}, [[name]]) by `value`."""
    for k, v in (durations or GRAFANA_DURATIONS).items():
        expr = expr.replace(k, v)
    expr = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::[^}]*)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z_][A-Za-z0-9_]*\]\]",
                  value, expr)
    if re.search(r"\$(?!\d)", expr):  # $1 in label_replace is PromQL's own
        raise ValueError(f"unsubstituted Grafana variable in {expr!r}")
    return expr


def label_values_selector(query: str) -> str | None:
    """The PromQL selector of a Grafana `label_values(selector, label)` or
    `query_result(expr)` variable query; None for `label_values(label)` and the like."""
    m = re.fullmatch(r"\s*label_values\(\s*(.+)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*query_result\(\s*(.+)\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    return None
