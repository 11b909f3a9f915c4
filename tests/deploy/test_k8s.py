"""Kubernetes manifests of deploy/k8s: rendered by deploy/k8s/render.py, validated OFFLINE against the
Kubernetes OpenAPI schemas that PyPI's kubernetes-validate ships (strict: unknown fields fail), and
checked for the invariants the deployment relies on. Run by scripts/k8s-validate.sh."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "deploy" / "k8s" / "render.py"
sys.path.insert(0, str(RENDER.parent))
import render  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from promql import SERVICE_MONITOR_SCHEMA  # noqa: E402

# 1.33: backoffLimitPerIndex/podFailurePolicy GA (the oldest release the README supports);
# 1.37: the newest schemas kubernetes-validate 1.37.0 ships.
K8S_VERSIONS = ["1.33.0", "1.37.0"]


def run_render(*args: str) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, str(RENDER), *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(d: dict) -> dict:
    return d["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def default_docs() -> list[dict]:
    rc, out, err = run_render()
    assert rc == 0, err
    return docs_of(out)


@pytest.fixture(scope="module")
def cpu_docs() -> list[dict]:
    rc, out, err = run_render("--set", "gpus_per_worker=0", "--set", "workers=2", "--set", "worker_cpu=2",
                              "--set", "worker_memory=4Gi", "--set", "storage_class=fast-ssd",
                              "--set", "registry=registry.example.org/team", "--set", "tag=1.2.3",
                              "--set", "config.NNUNET_EPOCHS=5")
    assert rc == 0, err
    return docs_of(out)


# every knob of deploy/k8s/values.env set to a non-default value
AFFINITY = ('{"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":100,"podAffinityTerm":'
            '{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app.kubernetes.io/component":"worker"}}}}]}}')
COORD_AFFINITY = ('{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":'
                  '[{"key":"node-role.kubernetes.io/infra","operator":"Exists"}]}]}}}')
ALL_KNOBS = {
    "worker_node_selector": "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3,topology.kubernetes.io/zone=eu-1a",
    "coordinator_node_selector": "node-role.kubernetes.io/infra=",
    "worker_tolerations": "dedicated=gpu:NoSchedule,cloud.example.com/spot:NoExecute",
    "coordinator_tolerations": "node-role.kubernetes.io/infra:NoSchedule",
    "worker_affinity": AFFINITY,
    "coordinator_affinity": COORD_AFFINITY,
    "runtime_class": "nvidia",
    "priority_class": "batch-low",
    "coordinator_priority_class": "batch-high",
    "queue_name": "team-a",
    "storage_access_mode": "ReadWriteMany",
    "storage_class": "cephfs",
    "service_monitor": "1",
    "service_monitor_labels": "release=kube-prometheus-stack",
    "service_monitor_interval": "15s",
    "grafana_dashboard": "1",
    "tls": "1",
}


def sets(knobs: dict[str, str]) -> list[str]:
    return [a for k, v in knobs.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def knob_docs() -> list[dict]:
    rc, out, err = run_render(*sets(ALL_KNOBS))
    assert rc == 0, err
    return docs_of(out)


@pytest.fixture(scope="module")
def claim_docs() -> list[dict]:
    """CPU workers on an existing ReadWriteMany claim, with every scheduling knob."""
    knobs = {**ALL_KNOBS, "gpus_per_worker": "0", "existing_claim": "team-nfs"}
    rc, out, err = run_render(*sets(knobs))
    assert rc == 0, err
    return docs_of(out)


def validate(d: dict, version: str) -> None:
    """Strict schema validation: Kubernetes' own schemas, our subset of the ServiceMonitor CRD."""
    if d["kind"] == "ServiceMonitor":
        jsonschema.validate(d, SERVICE_MONITOR_SCHEMA)
    else:
        # raises ValidationError (unknown field in strict mode, wrong type, missing required field)
        kubernetes_validate.validate(d, version, strict=True)


# ---------------------------------------------------------------- schema validation (offline)
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", ["default_docs", "cpu_docs", "knob_docs", "claim_docs"])
def test_manifests_validate_against_kubernetes_schemas(variant, version, request):
    docs = request.getfixturevalue(variant)
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Deployment", "Service", "Job"}
    for d in docs:
        validate(d, version)


def test_validation_catches_broken_knobs(knob_docs):
    """The strict validation sees into the knobs' objects: a misspelt affinity field, a toleration with
    a bad operator type and a misspelt ServiceMonitor field are rejected."""
    job = yaml.safe_load(yaml.safe_dump(by_kind(knob_docs, "Job", "nnunet-workers")))
    job["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecutionn"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job, "1.37.0")
    job = yaml.safe_load(yaml.safe_dump(by_kind(knob_docs, "Job", "nnunet-workers")))
    job["spec"]["template"]["spec"]["tolerations"][0]["tolerationSeconds"] = "soon"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job, "1.37.0")
    sm = yaml.safe_load(yaml.safe_dump(by_kind(knob_docs, "ServiceMonitor")))
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(sm, "1.37.0")
    sm["spec"]["endpoints"][0].pop("intervall")
    sm["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(sm, "1.37.0")


def test_validation_catches_a_broken_manifest(default_docs):
    """The validator really checks: a misspelt Job field and a wrong type are rejected."""
    job = by_kind(default_docs, "Job", "nnunet-workers")
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["backoffLimitPerIndexx"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["completions"] = "five"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)


def test_rendered_output_is_what_kubernetes_validate_cli_accepts(tmp_path):
    rc, out, err = run_render()
    assert rc == 0, err
    f = tmp_path / "nnunet.yaml"
    f.write_text(out)
    cli = Path(sys.executable).with_name("kubernetes-validate")
    p = subprocess.run([str(cli), "--strict", "--quiet", "-k", "1.37.0", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


# ---------------------------------------------------------------- invariants
def test_workers_are_an_indexed_job_with_per_index_backoff(default_docs):
    job = by_kind(default_docs, "Job", "nnunet-workers")
    s = job["spec"]
    assert s["completionMode"] == "Indexed"
    assert s["completions"] == 5 and s["parallelism"] == 5
    assert s["backoffLimitPerIndex"] >= 1
    assert "backoffLimit" not in s  # the per-index budget, not one shared by all folds
    assert s["podReplacementPolicy"] == "Failed"
    assert pod_spec(job)["restartPolicy"] == "Never"  # required by backoffLimitPerIndex


def test_pod_failure_policy_ignores_disruptions_and_fails_real_errors(default_docs):
    rules = by_kind(default_docs, "Job", "nnunet-workers")["spec"]["podFailurePolicy"]["rules"]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert any(c["type"] == "DisruptionTarget" for r in ignore for c in r.get("onPodConditions", []))
    assert not any("onExitCodes" in r for r in ignore), "no exit code may be ignored: real errors must count"
    fail = [r for r in rules if r["action"] in ("FailIndex", "FailJob")]
    assert fail and all(r["onExitCodes"]["operator"] == "In" for r in fail)
    codes = {c for r in fail for c in r["onExitCodes"]["values"]}
    assert 143 not in codes, "143 = stopped by SIGTERM/SIGUSR1 (preemption): must stay retryable"
    assert 0 not in codes


def test_every_worker_pod_requests_one_gpu_and_its_fold_budget(default_docs):
    job = by_kind(default_docs, "Job", "nnunet-workers")
    (c,) = pod_spec(job)["containers"]
    res = c["resources"]
    assert res["requests"]["nvidia.com/gpu"] == "1" and res["limits"]["nvidia.com/gpu"] == "1"
    assert res["requests"]["cpu"] == "8" and res["requests"]["memory"] == "32Gi"
    assert res["limits"]["memory"] == res["requests"]["memory"]
    assert "--device=$(NNUNET_WORKER_DEVICE)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NNUNET_WORKER_DEVICE"]["value"] == "cuda:0"
    assert env["NNUNET_WORKER_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert "--exit-when-idle" in c["args"]
    assert any(a.startswith("--coordinator=http://nnunet-coordinator:") for a in c["args"])


def test_workers_wait_for_the_run_before_exit_when_idle_can_fire(default_docs):
    """--exit-when-idle exits at once while the coordinator has no active run: the worker pods must
    not start their worker before the run submitted by nnunet-submit exists."""
    job = by_kind(default_docs, "Job", "nnunet-workers")
    (init,) = pod_spec(job)["initContainers"]
    script = init["args"][0]
    assert "nnunet status" in script and "$NNUNET_RUN_NAME" in script and "until" in script
    assert init["envFrom"] == [{"configMapRef": {"name": "nnunet-config"}}]
    assert init["image"] == by_kind(default_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    submit = pod_spec(by_kind(default_docs, "Job", "nnunet-submit"))["containers"][0]["args"][0]
    assert '--name "$NNUNET_RUN_NAME"' in submit
    p = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_cpu_variant_drops_the_gpu_and_applies_values(cpu_docs):
    job = by_kind(cpu_docs, "Job", "nnunet-workers")
    assert job["spec"]["completions"] == 2 and job["spec"]["parallelism"] == 2
    (c,) = pod_spec(job)["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["requests"] and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["resources"]["requests"]["cpu"] == "2" and c["resources"]["limits"]["memory"] == "4Gi"
    assert {e["name"]: e.get("value") for e in c["env"]}["NNUNET_WORKER_DEVICE"] == "cpu"
    assert "tolerations" not in pod_spec(job)
    assert c["image"] == "registry.example.org/team/nnunet-rs/worker:1.2.3"
    assert pod_spec(job)["initContainers"][0]["image"] == "registry.example.org/team/nnunet-rs/coordinator:1.2.3"
    assert by_kind(cpu_docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast-ssd"
    cm = by_kind(cpu_docs, "ConfigMap", "nnunet-config")["data"]
    assert cm["NNUNET_EPOCHS"] == "5" and cm["NNUNET_DEVICE"] == "cpu"


def test_token_is_a_mounted_secret_everywhere(default_docs):
    for name in ("nnunet-coordinator", "nnunet-workers", "nnunet-submit"):
        d = next(d for d in default_docs if d["metadata"]["name"] == name and d["kind"] in ("Deployment", "Job"))
        spec = pod_spec(d)
        vols = {v["name"]: v for v in spec["volumes"]}
        secret_vols = [n for n, v in vols.items() if v.get("secret", {}).get("secretName") == "nnunet-token"]
        assert len(secret_vols) == 1, name
        assert vols[secret_vols[0]]["secret"]["defaultMode"] & 0o007 == 0, "token must not be world-readable"
        (c,) = spec["containers"]
        mounts = [m for m in c["volumeMounts"] if m["name"] == secret_vols[0]]
        assert mounts and mounts[0]["readOnly"] is True and mounts[0]["mountPath"] == "/etc/nnunet"
        text = yaml.safe_dump(c)
        assert "/etc/nnunet/token" in text, f"{name} does not read the mounted token file"
        # never as a plain env value or a literal argument
        assert not any(e["name"] == "NNUNET_TOKEN" for e in c.get("env", [])), name
    assert not [d for d in default_docs if d["kind"] == "Secret"], "no Secret unless --token-file is given"


def test_token_file_emits_the_secret(tmp_path):
    tf = tmp_path / "token"
    tf.write_text("0123456789abcdef0123456789abcdef\n")
    rc, out, err = run_render("--token-file", str(tf))
    assert rc == 0, err
    sec = by_kind(docs_of(out), "Secret", "nnunet-token")
    assert base64.b64decode(sec["data"]["token"]).decode() == "0123456789abcdef0123456789abcdef"
    tf.write_text("short\n")
    rc, _, err = run_render("--token-file", str(tf))
    assert rc == 2 and "shorter than 16" in err


def test_coordinator_has_grpc_probes_volume_and_service(default_docs):
    dep = by_kind(default_docs, "Deployment", "nnunet-coordinator")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    (c,) = pod_spec(dep)["containers"]
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port, probe
    assert f"--listen=0.0.0.0:{grpc_port}" in c["args"]
    metrics_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    assert f"--metrics-listen=0.0.0.0:{metrics_port}" in c["args"]
    state = next(m for m in c["volumeMounts"] if m["name"] == "state")
    assert f"--state-dir={state['mountPath']}" in c["args"]
    claim = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "state")["persistentVolumeClaim"]["claimName"]
    pvc = by_kind(default_docs, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    svc = by_kind(default_docs, "Service", "nnunet-coordinator")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {grpc_port, metrics_port}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]


def test_pods_run_restricted(default_docs):
    ns = by_kind(default_docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in default_docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(d)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert "limits" in c["resources"] and "memory" in c["resources"]["limits"], d["metadata"]["name"]
        assert d["metadata"]["namespace"] == "nnunet"


def test_submit_job_reads_the_shared_config(default_docs):
    job = by_kind(default_docs, "Job", "nnunet-submit")
    assert job["spec"]["backoffLimit"] == 0  # a retried submit could start a second run
    (c,) = pod_spec(job)["containers"]
    assert c["envFrom"] == [{"configMapRef": {"name": "nnunet-config"}}]
    script = c["args"][0]
    cm = by_kind(default_docs, "ConfigMap", "nnunet-config")["data"]
    env = {e["name"] for e in c["env"]}
    assert "NNUNET_COORDINATOR" in env
    for var in re.findall(r"\$\{?(NNUNET_[A-Z_]+)", script):
        # NNUNET_TLS_CA comes with tls=1 only: read with a default, `set -u` must not trip on it
        ok = var in cm or var in env or (var == "NNUNET_TLS_CA" and "${NNUNET_TLS_CA:-}" in script)
        assert ok, f"submit script uses ${var}, neither in the ConfigMap nor in the container's env"
    # the ConfigMap is deploy/config.env, with the pod-side paths
    cfg = render.read_env(REPO / "deploy" / "config.env")
    for k in ("NNUNET_DATASET", "NNUNET_RUN_NAME", "NNUNET_EPOCHS", "NNUNET_ITERS", "NNUNET_VAL_ITERS"):
        assert cm[k] == cfg[k]
    assert cm["NNUNET_STATE_DIR"] == "/var/lib/nnunet" and cm["NNUNET_TOKEN_FILE"] == "/etc/nnunet/token"
    # the submit script is valid POSIX sh
    p = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_same_image_tag_and_names_as_the_docker_dir(default_docs):
    images = {c["image"] for d in default_docs if d["kind"] in ("Deployment", "Job") for c in pod_spec(d)["containers"]}
    assert images == {"nnunet-rs/coordinator:0.1.0", "nnunet-rs/worker:0.1.0"}
    readme = (REPO / "deploy" / "README.md").read_text()
    for img in images:
        assert img in readme, f"deploy/README.md does not show how to build {img}"


@pytest.mark.parametrize("bad", ["workers=0", "workers=x", "gpus_per_worker=2", "worker_memory=lots",
                                 "namespace=Bad_NS", "nosuchvalue=1", "config.lower=1", "worker_cpu=500m"])
def test_bad_values_are_refused(bad):
    rc, out, err = run_render("--set", bad)
    assert rc == 2 and out == "" and err.startswith("render.py: "), (rc, err)


def test_kustomization_lists_every_base_file():
    base = REPO / "deploy" / "k8s" / "base"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    files = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    env = (base / kust["configMapGenerator"][0]["envs"][0]).resolve()
    assert env == (REPO / "deploy" / "config.env").resolve()


# ---------------------------------------------------------------- cluster knobs
def test_scheduling_knobs_reach_the_right_pods(knob_docs):
    workers = pod_spec(by_kind(knob_docs, "Job", "nnunet-workers"))
    assert workers["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "topology.kubernetes.io/zone": "eu-1a"}
    assert workers["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},  # GPU workers always
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "cloud.example.com/spot", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert workers["affinity"] == json.loads(AFFINITY)
    assert workers["runtimeClassName"] == "nvidia"
    assert workers["priorityClassName"] == "batch-low"
    for d in (by_kind(knob_docs, "Deployment", "nnunet-coordinator"), by_kind(knob_docs, "Job", "nnunet-submit")):
        spec = pod_spec(d)
        assert spec["nodeSelector"] == {"node-role.kubernetes.io/infra": ""}
        assert spec["tolerations"] == [{"key": "node-role.kubernetes.io/infra", "operator": "Exists", "effect": "NoSchedule"}]
        assert spec["affinity"] == json.loads(COORD_AFFINITY)
        assert spec["priorityClassName"] == "batch-high"
        assert "runtimeClassName" not in spec  # no GPU there: the default runtime


def test_defaults_set_no_knob(default_docs):
    for d in default_docs:
        if d["kind"] in ("Deployment", "Job"):
            spec = pod_spec(d)
            assert not {"nodeSelector", "affinity", "runtimeClassName", "priorityClassName"} & set(spec), d["metadata"]["name"]
            assert render.QUEUE_LABEL not in d["metadata"]["labels"]
    # GPU workers keep the toleration of the GPU operator's taint; nothing else tolerates anything
    assert pod_spec(by_kind(default_docs, "Job", "nnunet-workers"))["tolerations"] == [render.GPU_TOLERATION]
    assert "tolerations" not in pod_spec(by_kind(default_docs, "Deployment"))
    assert not [d for d in default_docs if d["kind"] == "ServiceMonitor" or d["metadata"]["name"] == "nnunet-grafana-dashboard"]
    assert by_kind(default_docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_kueue_queue_label_is_on_the_worker_job_only(knob_docs):
    job = by_kind(knob_docs, "Job", "nnunet-workers")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # Kueue admits a Job by its own label (not the pod template's); the submit Job stays unqueued
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    assert "kueue.x-k8s.io/queue-name" not in by_kind(knob_docs, "Job", "nnunet-submit")["metadata"]["labels"]
    # Kueue needs requests for its quota: every container of the Job has them
    for c in pod_spec(job)["containers"] + pod_spec(job)["initContainers"]:
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]


def test_cpu_workers_keep_custom_tolerations_but_not_the_gpu_one(claim_docs):
    spec = pod_spec(by_kind(claim_docs, "Job", "nnunet-workers"))
    assert [t["key"] for t in spec["tolerations"]] == ["dedicated", "cloud.example.com/spot"]


def test_read_write_many_volume_is_shared_read_only_with_the_workers(knob_docs):
    pvc = by_kind(knob_docs, "PersistentVolumeClaim", "nnunet-state")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "cephfs"
    coord = pod_spec(by_kind(knob_docs, "Deployment", "nnunet-coordinator"))
    cmount = next(m for m in coord["containers"][0]["volumeMounts"] if m["name"] == "state")
    workers = pod_spec(by_kind(knob_docs, "Job", "nnunet-workers"))
    vol = next(v for v in workers["volumes"] if v["name"] == "state")
    assert vol["persistentVolumeClaim"] == {"claimName": "nnunet-state", "readOnly": True}
    wmount = next(m for m in workers["containers"][0]["volumeMounts"] if m["name"] == "state")
    # the same path as the coordinator's: the worker finds the run directory there and reads in place
    assert wmount["mountPath"] == cmount["mountPath"] and wmount["readOnly"] is True
    assert not any(m["name"] == "state" for m in workers["initContainers"][0]["volumeMounts"])


def test_existing_claim_replaces_the_generated_volume(claim_docs):
    assert not [d for d in claim_docs if d["kind"] == "PersistentVolumeClaim"]
    for d in (by_kind(claim_docs, "Deployment"), by_kind(claim_docs, "Job", "nnunet-workers")):
        vol = next(v for v in pod_spec(d)["volumes"] if v["name"] == "state")
        assert vol["persistentVolumeClaim"]["claimName"] == "team-nfs"


def test_service_monitor_scrapes_the_coordinator_metrics_port(knob_docs):
    sm = by_kind(knob_docs, "ServiceMonitor", "nnunet-coordinator")
    svc = by_kind(knob_docs, "Service", "nnunet-coordinator")
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"] == "nnunet"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # it selects the Service by the Service's labels ...
    sel = sm["spec"]["selector"]["matchLabels"]
    assert sel and all(svc["metadata"]["labels"].get(k) == v for k, v in sel.items())
    # ... and no other Service of the rendered objects
    assert [d["metadata"]["name"] for d in knob_docs if d["kind"] == "Service"] == ["nnunet-coordinator"]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["interval"] == "15s" and ep["path"] == "/metrics" and ep["scheme"] == "http"
    # the named Service port leads to the container port the coordinator serves /metrics on
    sport = next(p for p in svc["spec"]["ports"] if p["name"] == ep["port"])
    (c,) = pod_spec(by_kind(knob_docs, "Deployment"))["containers"]
    cport = next(p for p in c["ports"] if p["name"] == sport["targetPort"])
    assert f"--metrics-listen=0.0.0.0:{cport['containerPort']}" in c["args"]


def test_grafana_dashboard_configmap_holds_the_dashboard_file(knob_docs):
    cm = by_kind(knob_docs, "ConfigMap", "nnunet-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name, text), = cm["data"].items()
    assert text == (REPO / "deploy" / "grafana" / name).read_text()
    assert json.loads(text)["uid"] == "nnunet-rs-coordinator"


def _secret_volume(spec: dict, c: dict, path: str) -> dict:
    (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == path]
    assert m["readOnly"] is True
    vol = next(v for v in spec["volumes"] if v["name"] == m["name"])["secret"]
    assert vol["defaultMode"] & 0o007 == 0, "keys must not be world-readable"
    return vol


def test_tls_mounts_the_secrets_and_passes_the_certificates(knob_docs, default_docs):
    """tls=1: the coordinator serves with nnunet-tls and requires worker client certificates, the
    workers present nnunet-worker-tls, the submit Job and the init container verify with its CA only."""
    coord = pod_spec(by_kind(knob_docs, "Deployment", "nnunet-coordinator"))
    (c,) = coord["containers"]
    vol = _secret_volume(coord, c, "/etc/nnunet-tls")
    assert vol["secretName"] == "nnunet-tls" and [i["key"] for i in vol["items"]] == ["tls.crt", "tls.key", "client-ca.crt"]
    assert c["args"][-3:] == ["--tls-cert=/etc/nnunet-tls/tls.crt", "--tls-key=/etc/nnunet-tls/tls.key",
                              "--tls-client-ca=/etc/nnunet-tls/client-ca.crt"]
    # kubelet's gRPC probes cannot speak TLS: TCP probes on the same port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in c[probe] and c[probe]["tcpSocket"] == {"port": "grpc"}, probe
    svc = by_kind(knob_docs, "Service", "nnunet-coordinator")
    assert not any(p.get("appProtocol") == "kubernetes.io/h2c" for p in svc["spec"]["ports"])

    workers = pod_spec(by_kind(knob_docs, "Job", "nnunet-workers"))
    (w,) = workers["containers"]
    vol = _secret_volume(workers, w, "/etc/nnunet-tls")
    assert vol["secretName"] == "nnunet-worker-tls" and [i["key"] for i in vol["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    assert "--coordinator=https://nnunet-coordinator:50051" in w["args"]
    assert not any(a.startswith("--coordinator=http:") for a in w["args"])
    assert {"--tls-ca=/etc/nnunet-tls/ca.crt", "--tls-cert=/etc/nnunet-tls/tls.crt", "--tls-key=/etc/nnunet-tls/tls.key"} <= set(w["args"])

    submit = pod_spec(by_kind(knob_docs, "Job", "nnunet-submit"))
    for spec, client in ((submit, submit["containers"][0]), (workers, workers["initContainers"][0])):
        vol = _secret_volume(spec, client, "/etc/nnunet-tls")
        assert vol["secretName"] == "nnunet-worker-tls" and [i["key"] for i in vol["items"]] == ["ca.crt"]  # not the worker's key
        env = {e["name"]: e["value"] for e in client["env"]}
        assert env["NNUNET_COORDINATOR"] == "https://nnunet-coordinator:50051"
        assert env["NNUNET_TLS_CA"] == "/etc/nnunet-tls/ca.crt" and '--tls-ca "$NNUNET_TLS_CA"' in client["args"][0]

    # without the knob: plaintext h2c, gRPC probes, no TLS volume or argument anywhere
    for d in default_docs:
        if d["kind"] in ("Deployment", "Job"):
            spec = pod_spec(d)
            assert not [v for v in spec["volumes"] if v["name"].startswith("tls")], d["metadata"]["name"]
            for ct in spec["containers"] + spec.get("initContainers", []):
                assert not [a for a in ct.get("args", []) if a.startswith("--tls")], ct["name"]
                assert not [e for e in ct.get("env", []) if e["name"] == "NNUNET_TLS_CA"], ct["name"]
                assert all(e["value"].startswith("http://") for e in ct.get("env", []) if e["name"] == "NNUNET_COORDINATOR")
    dep = pod_spec(by_kind(default_docs, "Deployment"))["containers"][0]
    assert "grpc" in dep["readinessProbe"]


def test_readme_data_pod_for_a_shared_volume_is_valid_and_restricted(default_docs):
    """The pod deploy/README.md shows for moving data through a ReadWriteMany volume."""
    readme = (REPO / "deploy" / "README.md").read_text()
    pod = yaml.safe_load(readme.split("<<'POD'\n", 1)[1].split("\nPOD\n", 1)[0])
    pod["metadata"]["namespace"] = "nnunet"
    for v in K8S_VERSIONS:
        kubernetes_validate.validate(pod, v, strict=True)
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = spec["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    coord = pod_spec(by_kind(default_docs, "Deployment"))
    assert c["image"] == coord["containers"][0]["image"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == by_kind(default_docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert c["volumeMounts"][0]["mountPath"] == "/var/lib/nnunet"


@pytest.mark.parametrize("bad", [
    "worker_node_selector=novalue", "worker_node_selector=a b=c", "worker_tolerations=gpu:NoScheduleX",
    "coordinator_tolerations=:NoSchedule", "worker_affinity={not json", "worker_affinity={\"nodeAffinityy\":{}}",
    "worker_affinity=[]", "runtime_class=Bad_Name", "priority_class=UPPER", "queue_name=a b",
    "storage_access_mode=ReadOnlyMany", "existing_claim=bad/name", "service_monitor=yes", "grafana_dashboard=2",
    "service_monitor_labels=x", "service_monitor_interval=30 s", "tls=yes", "tls=2", "tls=",
])
def test_bad_knobs_are_refused(bad):
    rc, out, err = run_render("--set", bad)
    assert rc == 2 and out == "" and err.startswith("render.py: "), (rc, err)
    assert bad.split("=")[0] in err, err


# ---------------------------------------------------------------- the pods' scripts, for real
def _nnunet_bin() -> Path | None:
    cands = [REPO / "target" / p / "nnunet" for p in ("release", "debug")]
    cands = [c for c in cands if c.exists()]
    return max(cands, key=lambda c: c.stat().st_mtime) if cands else None


@pytest.fixture()
def coordinator(tmp_path):
    """A real `nnunet serve` on loopback, with the token file the pods would have mounted."""
    import socket
    import time

    nnunet = _nnunet_bin()
    if nnunet is None:
        pytest.skip("no target/{release,debug}/nnunet: build it (cargo build -p nnunet-coordinator) to run the pod scripts")
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(nnunet), "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"),
                             "--token-file", str(token)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if subprocess.run([str(nnunet), "status", "--coordinator", url, "--token-file", str(token)], capture_output=True).returncode == 0:
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield nnunet, url, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _pod_script(script: str, url: str, token: Path, state: Path) -> str:
    """The script as the pod runs it, pointed at the local coordinator instead of the Service."""
    return (script.replace("http://nnunet-coordinator:50051", url)
            .replace("/etc/nnunet/token", str(token)).replace("/var/lib/nnunet", str(state)))


def _pod_env(docs: list[dict], container: dict, url: str, nnunet: Path, **over: str) -> dict[str, str]:
    """The ConfigMap and the container's own env (the Service address replaced by `url`)."""
    env = dict(by_kind(docs, "ConfigMap", "nnunet-config")["data"])
    env.update({e["name"]: e["value"].replace("http://nnunet-coordinator:50051", url) for e in container.get("env", [])})
    env.update(over)
    env["PATH"] = f"{nnunet.parent}:/usr/bin:/bin"
    return env


def test_submit_job_and_worker_init_scripts_against_a_real_coordinator(default_docs, coordinator, tmp_path):
    nnunet, url, token = coordinator
    submit_c = pod_spec(by_kind(default_docs, "Job", "nnunet-submit"))["containers"][0]
    wait_c = pod_spec(by_kind(default_docs, "Job", "nnunet-workers"))["initContainers"][0]
    submit, wait = (_pod_script(c["args"][0], url, token, tmp_path) for c in (submit_c, wait_c))
    run = {"NNUNET_RUN_NAME": "k8s-test", "NNUNET_EPOCHS": "1", "NNUNET_ITERS": "1", "NNUNET_VAL_ITERS": "1"}
    env, wait_env = (_pod_env(default_docs, c, url, nnunet, **run) for c in (submit_c, wait_c))
    # the dataset as the README puts it on the volume: <volume>/datasets/Dataset001_Example
    assert env["NNUNET_DATASET"] == "datasets/Dataset001_Example"
    for cmd in (["synth", "--out", str(tmp_path / "png"), "--cases", "5", "--size", "32"],
                ["convert", "--images", str(tmp_path / "png" / "images"), "--masks", str(tmp_path / "png" / "masks"),
                 "--out", str(tmp_path / "datasets"), "--id", "1", "--name", "Example", "--quiet"]):
        p = subprocess.run([str(nnunet), *cmd], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr

    # before the run exists the workers' init container keeps waiting
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["sh", "-c", wait], env=wait_env, capture_output=True, text=True, timeout=3)

    p = subprocess.run(["sh", "-c", submit], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    run_id = re.search(r"submitted run ([^\s:]+)", p.stdout).group(1)

    # the run is known under its name (its dataset path was resolved below the volume)
    st = subprocess.run([str(nnunet), "status", "--coordinator", url, "--token-file", str(token), "--json"],
                        capture_output=True, text=True, timeout=30)
    runs = json.loads(st.stdout)
    assert [(r["run_id"], r["name"]) for r in runs] == [(run_id, "k8s-test")]

    # a second submit (a re-applied Job) does not start a second run
    p = subprocess.run(["sh", "-c", submit], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "not submitting again" in p.stdout, p.stdout + p.stderr
    st = subprocess.run([str(nnunet), "status", "--coordinator", url, "--token-file", str(token), "--json"],
                        capture_output=True, text=True, timeout=30)
    assert len(json.loads(st.stdout)) == 1

    # now the init container lets the worker start
    p = subprocess.run(["sh", "-c", wait], env=wait_env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


def test_help_and_readme_name_every_value():
    rc, out, err = run_render("--help")
    assert rc == 0, err
    values = render.read_env(render.VALUES)
    readme = (REPO / "deploy" / "README.md").read_text()
    for k in values:
        assert k in out, f"render.py --help does not document '{k}'"
    for k in set(values) & set(ALL_KNOBS) - {"storage_class"}:  # the cluster knobs table
        assert f"`{k}`" in readme, f"deploy/README.md does not document the knob '{k}'"
