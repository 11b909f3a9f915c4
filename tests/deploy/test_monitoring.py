"""The Grafana dashboard deploy/grafana/nnunet-coordinator.json, offline: valid JSON of the shape
Grafana imports (unique panel ids, grid positions, a Prometheus datasource variable every query uses),
and its PromQL parsed into the metric and label names it needs. Whether those names are what a running
coordinator exports on /metrics is checked against a real `nnunet serve` in test_k8s_pods.py.
Run by scripts/k8s-validate.sh."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "nnunet-coordinator.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from promql import check_dashboard_against, dashboard_queries, exported, legend_labels, names_in  # noqa: E402


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_importable(dash):
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        assert p["type"] in ("stat", "timeseries", "table", "gauge", "bargauge", "state-timeline"), p["type"]
        assert p["targets"], f"panel {p['title']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
    # one Prometheus datasource variable, used by every panel and query (no hard-coded datasource uid)
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    for p in dash["panels"]:
        for o in [p, *p["targets"]]:
            assert o["datasource"] == {"type": "prometheus", "uid": f"${{{ds['name']}}}"}, p["title"]
    # panels do not overlap
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']} overlaps another"
        cells |= mine


def test_every_query_names_nnunet_metrics(dash):
    queries = dashboard_queries(dash)
    assert len(queries) >= 10
    used = set()
    for title, expr, legend in queries:
        metrics, _ = names_in(expr)
        assert metrics, f"panel {title}: no metric in {expr!r}"
        assert all(m.startswith("nnunet_") for m in metrics), (title, metrics)
        used |= metrics
    # the run variable's query too
    (run_var,) = [v for v in dash["templating"]["list"] if v["name"] == "run"]
    assert names_in(run_var["definition"].replace("label_values(", "").split(",")[0])[0] <= used
    # the dashboard covers the coordinator's fold curves, tasks, workers and transfer counters
    assert {"nnunet_fold_train_loss", "nnunet_fold_val_loss", "nnunet_fold_pseudo_dice", "nnunet_fold_ema_dice",
            "nnunet_tasks", "nnunet_workers_registered", "nnunet_worker_last_seen_seconds",
            "nnunet_artifact_bytes_uploaded_total"} <= used


def test_promql_parser_finds_metrics_and_labels():
    """The name extraction the live check relies on: functions, keywords, ranges, strings, variables
    and grouping labels are not metric names; misspelt metrics are found."""
    m, lab = names_in('sum by (kind, state) (rate(nnunet_tasks{run=~"$run",state!="DONE"}[$__rate_interval])) > 1')
    assert m == {"nnunet_tasks"} and lab == {"kind", "state", "run"}
    m, lab = names_in('count(nnunet_run_state{state!~"DONE|FAILED"} == 1) or vector(0)')
    assert m == {"nnunet_run_state"} and lab == {"state"}
    m, _ = names_in("increase(nnunet_fenced_writes_total[1h]) / on(run) group_left nnunet_fold_epochz")
    assert m == {"nnunet_fenced_writes_total", "nnunet_fold_epochz"}
    assert legend_labels("{{run}} fold {{ fold }}") == {"run", "fold"}
    text = ('# HELP nnunet_tasks Tasks.\n# TYPE nnunet_tasks gauge\nnnunet_tasks{run="a",kind="train",state="DONE"} 5\n'
            "# TYPE nnunet_workers_registered gauge\nnnunet_workers_registered 1\n# TYPE nnunet_fold_epoch gauge\n")
    assert exported(text) == {"nnunet_tasks": {"run", "kind", "state"}, "nnunet_workers_registered": set(), "nnunet_fold_epoch": set()}


def test_dashboard_check_rejects_unknown_metrics_and_labels(dash):
    """The live check of test_k8s_pods.py fails on a metric or label /metrics does not have."""
    names = {m for _, e, _ in dashboard_queries(dash) for m in names_in(e)[0]}
    labels = ",".join(f'{x}="a"' for x in ("run", "fold", "worker", "device", "kind", "state"))
    text = "\n".join(f"# TYPE {n} gauge\n{n}{{{labels}}} 1" for n in sorted(names))
    check_dashboard_against(dash, text + "\n")
    with pytest.raises(AssertionError, match="does not export"):
        check_dashboard_against(dash, text.replace("nnunet_fold_ema_dice", "nnunet_fold_ema"))
    with pytest.raises(AssertionError, match="uses labels"):
        check_dashboard_against(dash, text.replace('fold="a",', ""))
