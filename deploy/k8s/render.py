#!/usr/bin/env python3
"""Renders the nnunet-rs Kubernetes manifests: the kustomize base in deploy/k8s/base with the values
that change between clusters applied, plus the ConfigMap `nnunet-config` made from deploy/config.env
(the same file the Slurm script reads).

    python3 deploy/k8s/render.py [--set KEY=VALUE ...] [--values FILE] [--token-file F] [-o OUT]

Values (defaults in deploy/k8s/values.env; --values FILE and then --set override them):
    namespace           nnunet
    registry            image registry prefix, e.g. registry.example.org/team (empty: none)
    tag                 image tag of both images
    coordinator_image   coordinator image name (before registry/tag)
    worker_image        worker image name
    workers             worker pods = GPUs used at once (1..5; 5 = one per fold)
    gpus_per_worker     1, or 0 for CPU workers (no nvidia.com/gpu request, --device cpu)
    worker_cpu          CPU request per worker = per fold (also its libtorch threads)
    worker_memory       RAM request and limit per worker
    coordinator_cpu, coordinator_memory
    storage_class       StorageClass of the state volume (empty: the cluster default)
    storage_size        size of the state volume (datasets, checkpoints, results)
    config.KEY          override one line of deploy/config.env in the ConfigMap
  scheduling (worker_* for the worker pods, coordinator_* for the coordinator and submit pods):
    worker_node_selector, coordinator_node_selector   nodeSelector, k=v,k2=v2
    worker_tolerations, coordinator_tolerations       key=value:Effect or key:Effect, comma-separated
    worker_affinity, coordinator_affinity             an Affinity object as one-line JSON
    runtime_class       runtimeClassName of the worker pods (e.g. nvidia)
    priority_class, coordinator_priority_class        priorityClassName
    queue_name          Kueue LocalQueue of the worker Job (label kueue.x-k8s.io/queue-name)
  storage:
    storage_access_mode ReadWriteOnce, or ReadWriteMany (workers then read the volume in place)
    existing_claim      an existing PVC to use as the state volume instead of nnunet-state
  monitoring:
    service_monitor     1: a Prometheus-operator ServiceMonitor for the coordinator's /metrics
    service_monitor_labels, service_monitor_interval  its labels (k=v,...) and scrape interval (30s)
    grafana_dashboard   1: deploy/grafana/nnunet-coordinator.json as a sidecar-labelled ConfigMap
  security:
    tls                 1: gRPC over TLS, workers with client certificates (mTLS); needs the Secrets
                        nnunet-tls (tls.crt, tls.key, client-ca.crt) and nnunet-worker-tls (tls.crt,
                        tls.key, ca.crt), see deploy/README.md; the coordinator's certificate needs
                        the SAN DNS:nnunet-coordinator (the Service name the pods dial)

--token-file F also emits the Secret `nnunet-token` from F (otherwise create it with kubectl, see
deploy/README.md; never commit a token). Needs PyYAML only. Exit code 2 on a bad value.
"""
from __future__ import annotations

import argparse
import base64
import copy
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import knobs  # noqa: E402
import mtls  # noqa: E402
from knobs import RenderError  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = HERE / "base"
VALUES = HERE / "values.env"

GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
DASHBOARD = HERE.parent / "grafana" / "nnunet-coordinator.json"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
STATE_MOUNT = "/var/lib/nnunet"
# ConfigMap keys that only mean something to the Slurm script (the pods use fixed paths and ports:
# the volume at /var/lib/nnunet, the Secret at /etc/nnunet/token, gRPC 50051, metrics 9464)
SLURM_ONLY = {"NNUNET_STATE_DIR", "NNUNET_TOKEN_FILE", "NNUNET_LOG_DIR", "NNUNET_PORT", "NNUNET_METRICS_PORT",
              "NNUNET_COORDINATOR_HOST", "NNUNET_LISTEN_HOST", "NNUNET_FOLDS", "NNUNET_TRAIN_ARGS"}
K8S_FIXED = {"NNUNET_STATE_DIR": "/var/lib/nnunet", "NNUNET_TOKEN_FILE": "/etc/nnunet/token"}

QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
IMAGE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")
CONFIG_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (values literal), '#' comments and blank lines ignored."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key, sep, value = s.partition("=")
        if not sep or not (CONFIG_KEY.match(key) or re.match(r"^[a-z_.A-Z0-9]+$", key)):
            raise RenderError(f"{path}:{n}: cannot parse '{line}' (want KEY=VALUE)")
        out[key] = value
    return out


def check_values(v: dict[str, str]) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise RenderError(msg)

    need(bool(DNS_LABEL.match(v["namespace"])), f"namespace '{v['namespace']}' is not a DNS label")
    need(v["workers"].isdigit() and 1 <= int(v["workers"]) <= 64, f"workers must be 1..64, got '{v['workers']}'")
    need(v["gpus_per_worker"] in ("0", "1"), f"gpus_per_worker must be 0 or 1 (one GPU per fold), got '{v['gpus_per_worker']}'")
    for k in ("worker_cpu", "worker_memory", "coordinator_cpu", "coordinator_memory", "storage_size"):
        need(bool(QUANTITY.match(v[k])), f"{k} '{v[k]}' is not a Kubernetes quantity (e.g. 8, 500m, 32Gi)")
    need(v["worker_cpu"].isdigit() and int(v["worker_cpu"]) >= 1,
         f"worker_cpu must be a whole number of CPUs (it is also the worker's thread count), got '{v['worker_cpu']}'")
    for k in ("coordinator_image", "worker_image", "tag"):
        need(bool(IMAGE_PART.match(v[k])), f"{k} '{v[k]}' is not a valid image reference part")
    need(v["registry"] == "" or bool(IMAGE_PART.match(v["registry"])), f"registry '{v['registry']}' is not valid")
    need(v["storage_class"] == "" or bool(DNS_LABEL.match(v["storage_class"].replace(".", "-"))),
         f"storage_class '{v['storage_class']}' is not a valid name")
    knobs.check(v)


def image(v: dict[str, str], name: str) -> str:
    ref = f"{name}:{v['tag']}"
    return f"{v['registry'].rstrip('/')}/{ref}" if v["registry"] else ref


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def render(values: dict[str, str], config: dict[str, str], token: str | None = None) -> list[dict]:
    check_values(values)
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for res in kust["resources"]:
        docs.extend(d for d in yaml.safe_load_all((BASE / res).read_text()) if d)

    # ConfigMap from deploy/config.env (what kustomize's configMapGenerator makes), pod-side paths
    data = {k: v for k, v in config.items() if k not in SLURM_ONLY}
    data.update(K8S_FIXED)
    data["NNUNET_DEVICE"] = "cpu" if values["gpus_per_worker"] == "0" else "cuda"
    docs.insert(1, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nnunet-config"}, "data": data})
    if token is not None:
        docs.insert(2, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "nnunet-token"},
            "data": {"token": base64.b64encode(token.encode()).decode()},
        })

    docs.extend(extras(values, docs))
    claim = values["existing_claim"] or "nnunet-state"
    if values["existing_claim"]:
        docs = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]
    ns = values["namespace"]
    tls = values["tls"] == "1"
    for d in docs:
        md = d.setdefault("metadata", {})
        if d["kind"] == "Namespace":
            md["name"] = ns
        else:
            md["namespace"] = ns
        md.setdefault("labels", {}).update(kust["labels"][0]["pairs"])
        tmpl = d.get("spec", {}).get("template")
        if tmpl:
            tmpl["metadata"].setdefault("labels", {}).update(kust["labels"][0]["pairs"])

        if d["kind"] == "PersistentVolumeClaim":
            d["spec"]["resources"]["requests"]["storage"] = values["storage_size"]
            d["spec"]["accessModes"] = [values["storage_access_mode"]]
            if values["storage_class"]:
                d["spec"]["storageClassName"] = values["storage_class"]
        elif d["kind"] == "Deployment" and md["name"] == "nnunet-coordinator":
            pod = d["spec"]["template"]["spec"]
            c = pod["containers"][0]
            c["image"] = image(values, values["coordinator_image"])
            c["resources"] = {"requests": {"cpu": values["coordinator_cpu"], "memory": values["coordinator_memory"]},
                              "limits": {"memory": values["coordinator_memory"]}}
            next(v for v in pod["volumes"] if v["name"] == "state")["persistentVolumeClaim"]["claimName"] = claim
            knobs.schedule(pod, values, "coordinator")
            if tls:
                mtls.coordinator(pod)
        elif d["kind"] == "Service" and md["name"] == "nnunet-coordinator" and tls:
            mtls.service(d)
        elif d["kind"] == "Job" and md["name"] == "nnunet-submit":
            containers(d)[0]["image"] = image(values, values["coordinator_image"])
            knobs.schedule(d["spec"]["template"]["spec"], values, "coordinator")
            if tls:
                mtls.submit(d["spec"]["template"]["spec"])
        elif d["kind"] == "Job" and md["name"] == "nnunet-workers":
            workers_job(d, values, claim)
            if tls:
                mtls.workers(d["spec"]["template"]["spec"])
    return docs


def workers_job(d: dict, values: dict[str, str], claim: str) -> None:
    n = int(values["workers"])
    d["spec"]["completions"] = n
    d["spec"]["parallelism"] = n
    if values["queue_name"]:
        # Kueue admits (unsuspends) the Job once its LocalQueue has quota for all its pods
        d["metadata"]["labels"][QUEUE_LABEL] = values["queue_name"]
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    c["image"] = image(values, values["worker_image"])
    for ic in pod.get("initContainers", []):
        ic["image"] = image(values, values["coordinator_image"])
    req = {"cpu": values["worker_cpu"], "memory": values["worker_memory"]}
    lim = {"memory": values["worker_memory"]}
    gpu = values["gpus_per_worker"] == "1"
    if gpu:
        req[GPU] = lim[GPU] = "1"
    else:
        # CPU workers: no GPU request, no GPU toleration, --device cpu
        for e in c["env"]:
            if e["name"] == "NNUNET_WORKER_DEVICE":
                e["value"] = "cpu"
    c["resources"] = {"requests": req, "limits": lim}
    knobs.schedule(pod, values, "worker", GPU_TOLERATION if gpu else None)
    if values["runtime_class"]:
        pod["runtimeClassName"] = values["runtime_class"]
    if values["storage_access_mode"] == "ReadWriteMany":
        # the state volume at the coordinator's path: the worker finds the run directory there and
        # reads the preprocessed cases in place instead of downloading them (it never writes there)
        pod["volumes"].append({"name": "state", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        c["volumeMounts"].append({"name": "state", "mountPath": STATE_MOUNT, "readOnly": True})


def extras(values: dict[str, str], docs: list[dict]) -> list[dict]:
    """The optional monitoring objects: ServiceMonitor, Grafana dashboard ConfigMap."""
    out = []
    if values["service_monitor"] == "1":
        svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "nnunet-coordinator")
        out.append(knobs.service_monitor(values, svc))
    if values["grafana_dashboard"] == "1":
        out.append(knobs.dashboard_configmap(DASHBOARD))
    return out


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the pods' shell scripts) as literal blocks, readable in the output."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def main(argv: list[str] | None = None) -> int:
    head, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value (see below) or config.KEY")
    ap.add_argument("--values", type=Path, help="a KEY=VALUE file applied over deploy/k8s/values.env")
    ap.add_argument("--config", type=Path, default=HERE.parent / "config.env", help="default: deploy/config.env")
    ap.add_argument("--token-file", type=Path, help="also emit the Secret nnunet-token from this file")
    ap.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    a = ap.parse_args(argv)
    try:
        values = read_env(VALUES)
        if a.values:
            values.update(read_env(a.values))
        config = read_env(a.config)
        for kv in a.set:
            k, sep, v = kv.partition("=")
            if not sep:
                raise RenderError(f"--set '{kv}': want KEY=VALUE")
            if k.startswith("config."):
                if not CONFIG_KEY.match(k[7:]):
                    raise RenderError(f"--set '{kv}': '{k[7:]}' is not a config key")
                config[k[7:]] = v
            elif k in values:
                values[k] = v
            else:
                raise RenderError(f"--set '{kv}': unknown value '{k}' (known: {', '.join(sorted(values))}, config.KEY)")
        token = None
        if a.token_file:
            token = a.token_file.read_text().strip()
            if len(token) < 16:
                raise RenderError(f"token in {a.token_file} is shorter than 16 characters (use `openssl rand -hex 32`)")
        docs = render(values, config, token)
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    text = "# Rendered by deploy/k8s/render.py; edit deploy/k8s/base, values.env or config.env instead.\n"
    text += yaml.dump_all([copy.deepcopy(d) for d in docs], Dumper=_Dumper, sort_keys=False, explicit_start=True)
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
