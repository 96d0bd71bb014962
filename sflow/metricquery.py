"""sFlow-RT's metric queries over per-data-source values: ``/metric``, ``/dump``, ``/table``.

Input is a list of *rows*, one per (agent, dataSource), each holding that data
source's latest metrics (counter metrics from the counter store, and flow
definitions as metrics: a flow's value at a data source is its largest flow
there, the ``topKeys[0]`` of ``/metric``)::

    {"agent": "10.0.0.1", "dataSource": "3", "lastUpdate": 812,
     "metrics": {"ifinoctets": 1234.5, "ifname": "swp1", ...}}

Answers, in sFlow-RT's shapes (its REST reference, ``Statistic`` and ``Metric``):

* ``Statistic`` — one per requested metric: ``{"metricName", "metricValue",
  "metricN", "lastUpdateMin", "lastUpdateMax"}`` plus ``"agent"``,
  ``"dataSource"``, ``"lastUpdate"`` of the data source that gave the value
  for ``max:`` (the default), ``min:`` and ``any:``; ``metricN`` counts the
  data sources summarised; no data: ``{"metricName", "metricN": 0}``.
  Aggregations: ``max min sum avg var sdev med q1 q2 q3 iqr any`` (``var`` and
  ``sdev`` are the population variance and deviation, quartiles interpolate
  linearly between the two nearest values).
* ``Metric`` — ``{"agent", "dataSource", "metricName", "metricValue",
  "lastUpdate"}``.

A metric name may be scoped to one data source: ``1478.ifinoctets``,
``2.1.load_one``. Pure: no engine, no lock.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["AGGREGATIONS", "MetricError", "parse_metric", "statistic", "dump", "table",
           "metric_ages", "agent_metrics", "row_matches", "MetricSpec"]

AGGREGATIONS = ("max", "min", "sum", "avg", "var", "sdev", "med", "q1", "q2", "q3", "iqr",
                "any")
_SCOPED = re.compile(r"((?:\d+\.)*\d+)\.([A-Za-z_][\w.-]*)\Z")
_NAME = re.compile(r"[A-Za-z_][\w.-]*\Z")
Row = Mapping[str, Any]


class MetricError(ValueError):
    """A metric list we refuse (400); the message names the metric."""


class MetricSpec:
    """One requested metric: aggregation, optional data source, name, and the text asked."""

    __slots__ = ("text", "agg", "datasource", "name")

    def __init__(self, text: str, agg: str, datasource: str | None, name: str) -> None:
        self.text, self.agg, self.datasource, self.name = text, agg, datasource, name

    def __repr__(self) -> str:
        return f"MetricSpec({self.text!r})"


def parse_metric(text: str, known: Iterable[str] = ()) -> MetricSpec:
    """``[agg:][datasource.]name``; ``known`` names win over a data-source reading
    (a flow definition may be called ``a.b``)."""
    agg = "max"
    rest = text
    head, sep, tail = text.partition(":")
    if sep:
        if head not in AGGREGATIONS:
            raise MetricError(f"metric: unknown aggregation {head!r} in {text!r} "
                              f"(known: {', '.join(AGGREGATIONS)})")
        agg, rest = head, tail
    if not rest:
        raise MetricError(f"metric: empty metric name in {text!r}")
    if rest in set(known):
        return MetricSpec(text, agg, None, rest)
    scoped = _SCOPED.match(rest)
    if scoped and not rest.replace(".", "").isdigit():
        return MetricSpec(text, agg, scoped.group(1), scoped.group(2))
    if not _NAME.match(rest):
        raise MetricError(f"metric: bad metric name {rest!r}")
    return MetricSpec(text, agg, None, rest)


def row_matches(row: Row, conditions: Mapping[str, Sequence[str]]) -> bool:
    """sFlow-RT's query filter on metric URLs: every attribute must equal one of its
    values (``*`` globs: ``host_name=*web.*``); ``agent``/``datasource`` work too."""
    metrics = row["metrics"]
    for attr, wanted in conditions.items():
        if attr == "agent":
            have: Any = row["agent"]
        elif attr in ("datasource", "dataSource"):
            have = row["dataSource"]
        else:
            have = metrics.get(attr)
        if have is None:
            return False
        text = _text(have)
        if not any(fnmatch.fnmatchcase(text, w) if "*" in w else text == w or _same_number(text, w)
                   for w in wanted):
            return False
    return True


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _values(spec: MetricSpec, rows: Iterable[Row]) -> list[tuple[Any, Row]]:
    out = []
    for row in rows:
        if spec.datasource is not None and row["dataSource"] != spec.datasource:
            continue
        value = row["metrics"].get(spec.name)
        if value is not None:
            out.append((value, row))
    return out


def _quantile(ordered: Sequence[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def statistic(spec: MetricSpec, rows: Iterable[Row]) -> dict[str, Any]:
    """The ``Statistic`` of one requested metric over the selected rows."""
    found = _values(spec, rows)
    out: dict[str, Any] = {"metricName": spec.text, "metricN": 0}
    if not found:
        return out
    numbers = [(v, r) for v, r in found if _numeric(v)]
    agg = spec.agg
    ages = [int(r["lastUpdate"]) for _, r in found]
    chosen: tuple[Any, Row] | None = None
    value: Any
    if agg in ("max", "min", "any"):
        pool = numbers or found
        if agg == "any":
            chosen = min(pool, key=lambda item: item[1]["lastUpdate"])  # the freshest
        else:
            key = (lambda item: item[0]) if numbers else (lambda item: _text(item[0]))
            chosen = max(pool, key=key) if agg == "max" else min(pool, key=key)
        value = chosen[0]
        n = len(pool)
    else:
        if not numbers:
            return out
        values = [float(v) for v, _ in numbers]
        n = len(values)
        mean = sum(values) / n
        if agg == "sum":
            value = sum(values)
        elif agg == "avg":
            value = mean
        elif agg in ("var", "sdev"):
            var = sum((v - mean) ** 2 for v in values) / n
            value = var if agg == "var" else math.sqrt(var)
        else:
            ordered = sorted(values)
            quart = {"med": 0.5, "q2": 0.5, "q1": 0.25, "q3": 0.75}
            if agg == "iqr":
                value = _quantile(ordered, 0.75) - _quantile(ordered, 0.25)
            else:
                value = _quantile(ordered, quart[agg])
        ages = [int(r["lastUpdate"]) for _, r in numbers]
    out.update(metricValue=value, metricN=n, lastUpdateMin=min(ages), lastUpdateMax=max(ages))
    if chosen is not None:
        row = chosen[1]
        out.update(agent=row["agent"], dataSource=row["dataSource"],
                   lastUpdate=int(row["lastUpdate"]))
    return out


def _metric(row: Row, name: str, value: Any) -> dict[str, Any]:
    return {"agent": row["agent"], "dataSource": row["dataSource"], "metricName": name,
            "metricValue": value, "lastUpdate": int(row["lastUpdate"])}


def _sort_key(row: Row) -> tuple[str, Any]:
    ds = row["dataSource"]
    return (row["agent"], tuple(int(p) if p.isdigit() else 0 for p in ds.split(".")))


def dump(specs: Sequence[MetricSpec] | None, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """``/dump``: every (agent, dataSource, metric) value; ``specs`` None is ``ALL``."""
    out = []
    for row in sorted(rows, key=_sort_key):
        metrics = row["metrics"]
        if specs is None:
            out.extend(_metric(row, name, metrics[name]) for name in sorted(metrics))
            continue
        for spec in specs:
            if spec.datasource is not None and row["dataSource"] != spec.datasource:
                continue
            if spec.name in metrics:
                out.append(_metric(row, spec.name, metrics[spec.name]))
    return out


def table(columns: Sequence[str], rows: Iterable[Row],
          known: Iterable[str] = ()) -> list[list[dict[str, Any]]]:
    """``/table``: one row per data source, one ``Metric`` per column (a missing value
    has no ``metricValue``). ``sort:<metric>:<n>`` sorts on that column, descending
    when ``n`` is negative, and keeps ``|n|`` rows. A data source with none of the
    columns (or no numeric value in the sort column) is left out."""
    names: list[str] = []
    sort_col: int | None = None
    limit: int | None = None
    descending = False
    for text in columns:
        if text.startswith("sort:"):
            if sort_col is not None:
                raise MetricError(f"metric: only one sort: column, got {text!r}")
            parts = text.split(":")
            if len(parts) not in (2, 3) or not parts[1]:
                raise MetricError(f"metric: expected sort:<metric>[:<n>], got {text!r}")
            if len(parts) == 3:
                try:
                    count = int(parts[2])
                except ValueError:
                    raise MetricError(f"metric: {text!r}: the count must be an integer") from None
                descending, limit = count < 0, abs(count)
            sort_col = len(names)
            names.append(parse_metric(parts[1], known).name)
        else:
            names.append(parse_metric(text, known).name)
    out = []
    for row in sorted(rows, key=_sort_key):
        metrics = row["metrics"]
        if not any(name in metrics for name in names):
            continue
        if sort_col is not None and not _numeric(metrics.get(names[sort_col])):
            continue
        cells = []
        for name in names:
            cell = {"agent": row["agent"], "dataSource": row["dataSource"], "metricName": name,
                    "lastUpdate": int(row["lastUpdate"])}
            if name in metrics:
                cell["metricValue"] = metrics[name]
            cells.append(cell)
        out.append(cells)
    if sort_col is not None:
        col = sort_col
        out.sort(key=lambda cells: cells[col]["metricValue"], reverse=descending)
        if limit is not None:
            out = out[:limit]
    return out


def metric_ages(rows: Iterable[Row]) -> dict[str, int]:
    """``/metrics/json``: metric name → ms since any data source last reported it."""
    ages: dict[str, int] = {}
    for row in rows:
        age = int(row["lastUpdate"])
        for name in row["metrics"]:
            if name not in ages or age < ages[name]:
                ages[name] = age
    return dict(sorted(ages.items()))


def agent_metrics(rows: Iterable[Row]) -> dict[str, Any]:
    """``/metric/{agent}/json``: ``"<dataSource>.<metric>"`` → latest value."""
    out: dict[str, Any] = {}
    for row in sorted(rows, key=_sort_key):
        ds = row["dataSource"]
        for name, value in sorted(row["metrics"].items()):
            out[f"{ds}.{name}"] = value
    return out
