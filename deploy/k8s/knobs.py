"""The cluster knobs of deploy/k8s/values.env that are not plain strings: node selectors, tolerations,
affinities, label lists, and the objects they add (ServiceMonitor, Grafana dashboard ConfigMap).
Every parser raises RenderError (exit code 2 in render.py) with the value's name on bad input."""
from __future__ import annotations

import json
import re
from pathlib import Path


class RenderError(Exception):
    pass


# Kubernetes qualified names: an optional DNS-subdomain prefix and a name of at most 63 characters
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
LABEL_VALUE = re.compile(rf"^({_NAME})?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
AFFINITY_KEYS = {"nodeAffinity", "podAffinity", "podAntiAffinity"}


def labels(name: str, text: str) -> dict[str, str]:
    """`k=v,k2=v2` -> {k: v, k2: v2} (empty text: {})."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not LABEL_KEY.match(k) or not LABEL_VALUE.match(v):
            raise RenderError(f"{name}: '{item}' is not key=value with a valid label key and value")
        out[k] = v
    return out


def tolerations(name: str, text: str) -> list[dict]:
    """`kubectl taint` syntax, comma-separated: key=value:Effect (Equal) or key:Effect (Exists)."""
    out: list[dict] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kv, sep, effect = item.rpartition(":")
        if not sep or effect not in EFFECTS:
            raise RenderError(f"{name}: '{item}' wants key[=value]:Effect with Effect one of {', '.join(EFFECTS)}")
        k, eq, v = kv.partition("=")
        if not LABEL_KEY.match(k) or (eq and not LABEL_VALUE.match(v)):
            raise RenderError(f"{name}: '{item}' has an invalid taint key or value")
        t = {"key": k, "operator": "Equal", "value": v, "effect": effect} if eq else {"key": k, "operator": "Exists", "effect": effect}
        out.append(t)
    return out


def affinity(name: str, text: str) -> dict | None:
    """A Kubernetes Affinity object as JSON (its fields are checked by the schema validation)."""
    if not text.strip():
        return None
    try:
        a = json.loads(text)
    except json.JSONDecodeError as e:
        raise RenderError(f"{name}: not JSON ({e})") from e
    if not isinstance(a, dict) or not a or not set(a) <= AFFINITY_KEYS:
        raise RenderError(f"{name}: want a JSON object with some of {', '.join(sorted(AFFINITY_KEYS))}")
    return a


def class_name(name: str, text: str) -> str | None:
    if not text:
        return None
    if not DNS_SUBDOMAIN.match(text):
        raise RenderError(f"{name}: '{text}' is not a valid object name")
    return text


def check(v: dict[str, str]) -> None:
    """Parses every knob once so a bad one fails before anything is rendered."""
    for side in ("worker", "coordinator"):
        labels(f"{side}_node_selector", v[f"{side}_node_selector"])
        tolerations(f"{side}_tolerations", v[f"{side}_tolerations"])
        affinity(f"{side}_affinity", v[f"{side}_affinity"])
    for k in ("runtime_class", "priority_class", "coordinator_priority_class", "existing_claim"):
        class_name(k, v[k])
    if v["queue_name"] and not LABEL_VALUE.match(v["queue_name"]):
        raise RenderError(f"queue_name: '{v['queue_name']}' is not a valid label value")
    if v["storage_access_mode"] not in ("ReadWriteOnce", "ReadWriteMany"):
        raise RenderError(f"storage_access_mode must be ReadWriteOnce or ReadWriteMany, got '{v['storage_access_mode']}'")
    for k in ("service_monitor", "grafana_dashboard"):
        if v[k] not in ("0", "1"):
            raise RenderError(f"{k} must be 0 or 1, got '{v[k]}'")
    labels("service_monitor_labels", v["service_monitor_labels"])
    if v["tls"] not in ("0", "1"):
        raise RenderError(f"tls must be 0 (plaintext gRPC) or 1 (TLS, workers with client certificates), got '{v['tls']}'")
    if not DURATION.match(v["service_monitor_interval"]):
        raise RenderError(f"service_monitor_interval '{v['service_monitor_interval']}' is not a duration like 30s or 1m")


def schedule(pod: dict, v: dict[str, str], side: str, gpu_toleration: dict | None = None) -> None:
    """nodeSelector, tolerations, affinity and priorityClassName of one pod spec (side: worker|coordinator)."""
    sel = labels(f"{side}_node_selector", v[f"{side}_node_selector"])
    if sel:
        pod["nodeSelector"] = sel
    tol = tolerations(f"{side}_tolerations", v[f"{side}_tolerations"])
    if gpu_toleration and gpu_toleration not in tol:
        tol.insert(0, gpu_toleration)
    if tol:
        pod["tolerations"] = tol
    else:
        pod.pop("tolerations", None)
    aff = affinity(f"{side}_affinity", v[f"{side}_affinity"])
    if aff:
        pod["affinity"] = aff
    prio = v["priority_class"] if side == "worker" else v["coordinator_priority_class"]
    if prio:
        pod["priorityClassName"] = prio


def service_monitor(v: dict[str, str], service: dict) -> dict:
    """A monitoring.coreos.com/v1 ServiceMonitor scraping the coordinator Service's `metrics` port."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "nnunet-coordinator", "labels": {**service["metadata"]["labels"], **labels("service_monitor_labels", v["service_monitor_labels"])}},
        "spec": {
            # Services are selected by their own labels (the Service's selector picks pods)
            "selector": {"matchLabels": {k: service["metadata"]["labels"][k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/component")}},
            "endpoints": [{"port": "metrics", "path": "/metrics", "scheme": "http", "interval": v["service_monitor_interval"]}],
        },
    }


def dashboard_configmap(path: Path) -> dict:
    """The Grafana dashboard JSON as a ConfigMap for Grafana's dashboard sidecar."""
    text = path.read_text()
    json.loads(text)  # refuse to ship a broken dashboard
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "nnunet-grafana-dashboard", "labels": {"grafana_dashboard": "1"}},
        "data": {path.name: text},
    }
