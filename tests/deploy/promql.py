"""Small helpers for the monitoring tests: the metric and label names a PromQL expression (and its
Grafana legend) uses, the names a Prometheus text exposition exports, and a strict subset schema of
the Prometheus-operator ServiceMonitor (monitoring.coreos.com/v1) for the fields we emit."""
from __future__ import annotations

import re

# PromQL functions, aggregations, keywords and Grafana's built-in variables are not metric names
KEYWORDS = {
    "sum", "count", "avg", "min", "max", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "vector", "scalar", "abs", "ceil", "floor", "round",
    "clamp", "clamp_min", "clamp_max", "time", "timestamp", "label_replace", "label_join", "histogram_quantile",
    "absent", "absent_over_time", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "last_over_time",
    "changes", "resets", "sort", "sort_desc", "label_values", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) that a PromQL expression refers to."""
    labels: set[str] = set()
    e = _VAR.sub(" ", expr)
    e = _STRING.sub('""', e)
    for m in _BRACES.finditer(e):
        labels.update(_MATCHER.findall(m.group(1)))
    e = _BRACES.sub(" ", e)
    for m in _GROUPING.finditer(e):
        labels.update(x.strip() for x in m.group(1).split(",") if x.strip())
    e = _GROUPING.sub(" ", e)
    e = _RANGE.sub(" ", e)
    metrics = {m.group(1) for m in _IDENT.finditer(e) if not m.group(2) and m.group(1).lower() not in KEYWORDS}
    return metrics, labels


def legend_labels(fmt: str) -> set[str]:
    return set(_LEGEND.findall(fmt or ""))


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s+\S+")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"')


def exported(text: str) -> dict[str, set[str]]:
    """metric name -> the label names of its samples, from a Prometheus text exposition (metrics that
    only have # TYPE lines map to an empty set)."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            out.setdefault(line.split()[2], set())
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            out.setdefault(m.group(1), set()).update(_LABEL.findall(m.group(3) or ""))
    return out


def dashboard_queries(dash: dict) -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every target of every panel (rows' nested panels too)."""
    out = []
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop(0)
        stack.extend(p.get("panels", []))
        for t in p.get("targets", []):
            out.append((p.get("title", ""), t.get("expr", ""), t.get("legendFormat", "")))
    return out


def check_dashboard_against(dash: dict, metrics_text: str) -> None:
    """Every metric a dashboard query names is exported by the coordinator, with samples after a run,
    and every label a query or its legend uses is a label of those samples."""
    have = exported(metrics_text)
    assert "nnunet_workers_registered" in have
    for title, expr, legend in dashboard_queries(dash):
        metrics, labels = names_in(expr)
        missing = metrics - set(have)
        assert not missing, f"dashboard panel '{title}' queries {sorted(missing)}, which /metrics does not export"
        sample_labels = set().union(*(have[m] for m in metrics))
        for m in metrics:
            assert have[m] or m == "nnunet_workers_registered" or m.endswith("_total"), f"{m} has no sample after a run"
        unknown = (labels | legend_labels(legend)) - sample_labels
        assert not unknown, f"dashboard panel '{title}' uses labels {sorted(unknown)} that {sorted(metrics)} do not have"


# ServiceMonitor monitoring.coreos.com/v1: the fields we emit, with the CRD's types, enums and patterns;
# additionalProperties false (strict, like kubernetes-validate --strict) where we write the object.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name", "namespace"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                           "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "minProperties": 1,
                             "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
