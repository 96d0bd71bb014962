"""What a Prometheus exposition exports, and what the Grafana dashboard's
queries use: shared by the in-process check (tests/contrib) and the lab's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "contrib" / "grafana" / "pytapdemon.json"
NAME = re.compile(r"\bpytapdemon_[a-z0-9_]+\b")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
# The series a family of each type always has (``_created`` only when its samples show it).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"),
            "info": ("_info",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "stateset": ("",),
            "gauge": ("",), "unknown": ("",)}


def exported(text: str) -> dict[str, set[str]]:
    """Every series name the exposition declares (from its TYPE lines, so a labelled
    family with no sample yet counts) → the label names its samples carry."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)  # collapsed rows hold their panels


def queries(path: Path = GRAFANA) -> list[tuple[str, str, str]]:
    """(panel title, expr, legend format) of every target of the dashboard."""
    dashboard = json.loads(path.read_text())
    return [(p.get("title", ""), t["expr"], t.get("legendFormat", ""))
            for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def names_in(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def grouping_labels(expr: str, legend: str = "") -> set[str]:
    labels = {label.strip() for group in BY.findall(expr) for label in group.split(",") if label.strip()}
    return (labels | set(LEGEND.findall(legend))) - {"le"}
