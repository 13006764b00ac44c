"""Fetch and parse a Prometheus text exposition (format 0.0.4), as tern serves at /metrics.

A small strict parser: every sample must belong to the family of the `# TYPE` line before
it (a histogram's samples are name_bucket, name_sum and name_count), a family may be
declared once, and label values are unescaped. promtool checks the format itself
(`promtool check metrics`); this gives the tests the families, samples and values.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{(.*)\}})?\s+(\S+)(?:\s+-?\d+)?$")
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float

    def key(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.labels.items())


@dataclass
class Family:
    name: str
    type: str
    help: str = ""
    samples: list[Sample] = field(default_factory=list)

    def series(self, suffix: str = "") -> list[Sample]:
        return [s for s in self.samples if s.name == self.name + suffix]


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        if not m:
            raise ValueError(f"bad label set {{{text}}} at {text[pos:]!r}")
        name, value = m.group(1), _unescape(m.group(2))
        if name in labels:
            raise ValueError(f"label {name} twice in {{{text}}}")
        labels[name] = value
        pos = m.end()
    return labels


def parse(text: str) -> dict[str, Family]:
    families: dict[str, Family] = {}
    current: Family | None = None
    helps: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "HELP":
                helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            elif len(parts) >= 4 and parts[1] == "TYPE":
                name, typ = parts[2], parts[3].strip()
                if name in families:
                    raise ValueError(f"line {n}: family {name} declared twice")
                current = families[name] = Family(name, typ, helps.get(name, ""))
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise ValueError(f"line {n}: not a sample: {line!r}")
        name, labels, value = m.group(1), parse_labels(m.group(2) or ""), float(m.group(3))
        allowed = {current.name} | {current.name + s for s in SUFFIXES.get(current.type, ())} if current else set()
        if name not in allowed:
            raise ValueError(f"line {n}: sample {name} outside its family (after # TYPE of "
                             f"{current.name if current else 'nothing'})")
        current.samples.append(Sample(name, labels, value))
    for name, fam in families.items():
        fam.help = helps.get(name, fam.help)
    return families


class Scrape:
    """One /metrics response."""

    def __init__(self, text: str, content_type: str = "") -> None:
        self.text = text
        self.content_type = content_type
        self.families = parse(text)

    def family(self, name: str) -> Family | None:
        return self.families.get(name)

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the series `name` with exactly these labels, or None."""
        for fam in self.families.values():
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return None

    def samples(self, name: str) -> list[Sample]:
        return [s for fam in self.families.values() for s in fam.samples if s.name == name]

    def total(self, name: str) -> float:
        return math.fsum(s.value for s in self.samples(name))


def fetch(base: str, token: str | None = None, timeout: float = 10) -> tuple[int, str, str]:
    """GET {base}/metrics: (status, content type, body)."""
    req = urllib.request.Request(f"{base}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode(errors="replace")


def scrape(base: str, token: str | None = None) -> Scrape:
    status, ctype, body = fetch(base, token)
    assert status == 200, f"GET {base}/metrics answered {status}: {body[:500]}"
    return Scrape(body, ctype)
