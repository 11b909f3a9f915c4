"""The Kubernetes pods' commands, run as local processes: the coordinator container's exact args, the
submit Job's script and the worker Job's args (CPU variant) from the rendered manifests, with the
in-cluster names replaced by loopback addresses and temp dirs. The worker gets --no-shared-fs, as in a
pod it cannot see the coordinator's volume: it downloads its inputs through the gRPC API. The run
trains all five folds (1 epoch x 1 iteration, tiny synthetic data) and writes its CV summary; the
coordinator's /metrics (from --metrics-listen), scraped at the path and port the rendered ServiceMonitor
names, exports every metric and label the Grafana dashboard (rendered as its ConfigMap) queries.

Needs target/{release,debug}/nnunet and nnunet-worker (skips with a message otherwise). Run by
tests/deploy/run.sh after scripts/k8s-validate.sh."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from promql import check_dashboard_against  # noqa: E402

RENDER = REPO / "deploy" / "k8s" / "render.py"


def bins() -> Path | None:
    dirs = [REPO / "target" / p for p in ("release", "debug")]
    dirs = [d for d in dirs if (d / "nnunet").exists() and (d / "nnunet-worker").exists()]
    return max(dirs, key=lambda d: (d / "nnunet-worker").stat().st_mtime) if dirs else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pods_as_processes_train_a_run(tmp_path):
    bin_dir = bins()
    if bin_dir is None:
        pytest.skip("no nnunet + nnunet-worker in target/release or target/debug: build them first")
    p = subprocess.run([sys.executable, str(RENDER), "--set", "gpus_per_worker=0", "--set", "workers=1", "--set", "worker_cpu=1",
                        "--set", "config.NNUNET_EPOCHS=1", "--set", "config.NNUNET_ITERS=1", "--set", "config.NNUNET_VAL_ITERS=1",
                        "--set", "config.NNUNET_RUN_NAME=pods-test", "--set", "service_monitor=1", "--set", "grafana_dashboard=1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    get = lambda kind, name: next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)  # noqa: E731
    cm = get("ConfigMap", "nnunet-config")["data"]
    coord_c = get("Deployment", "nnunet-coordinator")["spec"]["template"]["spec"]["containers"][0]
    submit_c = get("Job", "nnunet-submit")["spec"]["template"]["spec"]["containers"][0]
    worker_c = get("Job", "nnunet-workers")["spec"]["template"]["spec"]["containers"][0]

    state, token = tmp_path / "state", tmp_path / "token"
    token.write_text("fedcba9876543210fedcba9876543210\n")
    port, mport = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"

    def local(s: str) -> str:
        return (s.replace("0.0.0.0:50051", f"127.0.0.1:{port}").replace("0.0.0.0:9464", f"127.0.0.1:{mport}")
                .replace("http://nnunet-coordinator:50051", url).replace("/var/lib/nnunet", str(state))
                .replace("/etc/nnunet/token", str(token)).replace("/scratch", str(tmp_path / "scratch")))

    # the dataset on the "volume", where deploy/README.md puts it
    for cmd in (["synth", "--out", str(tmp_path / "png"), "--cases", "5", "--size", "32"],
                ["convert", "--images", str(tmp_path / "png" / "images"), "--masks", str(tmp_path / "png" / "masks"),
                 "--out", str(state / "datasets"), "--id", "1", "--name", "Example", "--quiet"]):
        r = subprocess.run([str(bin_dir / "nnunet"), *cmd], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(tmp_path / "scratch")}
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("coordinator", "worker")}
    # the coordinator image's ENTRYPOINT is nnunet (deploy/docker/Dockerfile.coordinator)
    coord = subprocess.Popen([str(bin_dir / "nnunet"), *[local(a) for a in coord_c["args"]]], stdout=logs["coordinator"], stderr=subprocess.STDOUT, env=env)
    worker = None
    try:
        # the submit Job: waits for the coordinator, submits once
        sub = subprocess.run(["sh", "-c", local(submit_c["args"][0])], env={**env, **cm}, capture_output=True, text=True, timeout=120)
        assert sub.returncode == 0, sub.stdout + sub.stderr + (tmp_path / "coordinator.log").read_text()

        # the worker Job's container, with what kubelet substitutes for $(VAR)
        wenv = {e["name"]: e.get("value", "") for e in worker_c["env"]}
        wenv["NNUNET_WORKER_THREADS"] = "1"  # resourceFieldRef requests.cpu
        wargs = [local(a).replace("$(NNUNET_WORKER_DEVICE)", wenv["NNUNET_WORKER_DEVICE"])
                 .replace("$(NNUNET_WORKER_THREADS)", wenv["NNUNET_WORKER_THREADS"]) for a in worker_c["args"]]
        assert "--device=cpu" in wargs and "--exit-when-idle" in wargs
        worker = subprocess.Popen([str(bin_dir / "nnunet-worker"), *wargs, "--no-shared-fs"], stdout=logs["worker"],
                                  stderr=subprocess.STDOUT, env={**env, "HOME": local(wenv["HOME"]), "TMPDIR": str(tmp_path)})
        rc = worker.wait(timeout=600)
        wlog = (tmp_path / "worker.log").read_text()
        assert rc == 0, wlog[-3000:]
        assert "resuming" not in wlog

        st = subprocess.run([str(bin_dir / "nnunet"), "status", "--coordinator", url, "--token-file", str(token), "--json"],
                            capture_output=True, text=True, timeout=30)
        (run,) = json.loads(st.stdout)
        assert run["name"] == "pods-test" and run["state"] == "DONE", run
        summary = list(state.glob("runs/*/results/Dataset001_Example/nnUNetTrainer__nnUNetPlans__2d/"
                                  "crossval_results_folds_0_1_2_3_4/summary.json"))
        assert len(summary) == 1
        assert len(json.loads(summary[0].read_text())["metric_per_case"]) == 5
        # the worker really downloaded its inputs (no shared filesystem)
        assert any((tmp_path / "scratch" / "cache").rglob("*.npy")), "no downloaded inputs in the worker's cache dir"

        # Prometheus scrapes what --metrics-listen serves, where the ServiceMonitor points it
        (ep,) = get("ServiceMonitor", "nnunet-coordinator")["spec"]["endpoints"]
        with urllib.request.urlopen(f"{ep['scheme']}://127.0.0.1:{mport}{ep['path']}", timeout=10) as resp:
            metrics = resp.read().decode()
        check_dashboard_against(json.loads(next(iter(get("ConfigMap", "nnunet-grafana-dashboard")["data"].values()))), metrics)
    finally:
        for proc in (worker, coord):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for f in logs.values():
            f.close()
