"""The Kubernetes pods' commands, run as local processes: the coordinator container's exact args, the
submit Job's script and the worker Job's args (CPU variant) from the rendered manifests, with the
in-cluster names replaced by loopback addresses and temp dirs. The worker gets --no-shared-fs, as in a
pod it cannot see the coordinator's volume: it downloads its inputs through the gRPC API. The run
trains all five folds (1 epoch x 1 iteration, tiny synthetic data) and writes its CV summary; the
coordinator's /metrics (from --metrics-listen), scraped at the path and port the rendered ServiceMonitor
names, exports every metric and label the Grafana dashboard (rendered as its ConfigMap) queries.
With tls=1 the certificates and Secrets are made by the commands deploy/README.md shows, the pods
reach the coordinator over TLS (workers with their client certificate), and a worker without the
client certificate is refused.

Needs target/{release,debug}/nnunet and nnunet-worker (skips with a message otherwise). Run by
tests/deploy/run.sh after scripts/k8s-validate.sh."""
from __future__ import annotations

import json
import re
import shutil
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


def readme_secrets(tmp_path: Path) -> dict[str, Path]:
    """Runs deploy/README.md's openssl commands, then lays out each `kubectl create secret` as the
    folder its Secret volume would be: {secret name: folder with one file per key}."""
    sec = (REPO / "deploy" / "README.md").read_text().split("### TLS between workers and the coordinator", 1)[1]
    blocks = [b.split("```", 1)[0] for b in sec.split("```bash\n")[1:3]]
    certs = tmp_path / "certs"
    certs.mkdir()
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks[0]], cwd=certs, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for cmd in blocks[1].replace("\\\n", " ").splitlines():
        name = re.search(r"create secret generic (\S+)", cmd).group(1)
        out[name] = tmp_path / "secrets" / name
        out[name].mkdir(parents=True)
        for key, src in re.findall(r"--from-file=([^=\s]+)=(\S+)", cmd):
            shutil.copy(certs / src, out[name] / key)
    assert set(out) == {"nnunet-tls", "nnunet-worker-tls"}
    return out


def tls_dir(pod: dict, c: dict, secrets: dict[str, Path]) -> str:
    """The folder standing for the Secret container `c` mounts at /etc/nnunet-tls."""
    (m,) = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/etc/nnunet-tls"]
    vol = next(v for v in pod["volumes"] if v["name"] == m["name"])
    d = secrets[vol["secret"]["secretName"]]
    assert {i["key"] for i in vol["secret"]["items"]} <= {f.name for f in d.iterdir()}, vol
    return str(d)


@pytest.mark.parametrize("tls", ["0", "1"])
def test_pods_as_processes_train_a_run(tmp_path, tls):
    bin_dir = bins()
    if bin_dir is None:
        pytest.skip("no nnunet + nnunet-worker in target/release or target/debug: build them first")
    p = subprocess.run([sys.executable, str(RENDER), "--set", f"tls={tls}", "--set", "gpus_per_worker=0", "--set", "workers=1", "--set", "worker_cpu=1",
                        "--set", "config.NNUNET_EPOCHS=1", "--set", "config.NNUNET_ITERS=1", "--set", "config.NNUNET_VAL_ITERS=1",
                        "--set", "config.NNUNET_RUN_NAME=pods-test", "--set", "service_monitor=1", "--set", "grafana_dashboard=1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    get = lambda kind, name: next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)  # noqa: E731
    cm = get("ConfigMap", "nnunet-config")["data"]
    coord_pod = get("Deployment", "nnunet-coordinator")["spec"]["template"]["spec"]
    submit_pod = get("Job", "nnunet-submit")["spec"]["template"]["spec"]
    worker_pod = get("Job", "nnunet-workers")["spec"]["template"]["spec"]
    coord_c, submit_c, worker_c, init_c = coord_pod["containers"][0], submit_pod["containers"][0], worker_pod["containers"][0], worker_pod["initContainers"][0]

    state, token = tmp_path / "state", tmp_path / "token"
    token.write_text("fedcba9876543210fedcba9876543210\n")
    port, mport = free_port(), free_port()
    # with TLS the pods dial the name in the coordinator's certificate: localhost stands for the Service
    url = f"https://localhost:{port}" if tls == "1" else f"http://127.0.0.1:{port}"
    secrets = readme_secrets(tmp_path) if tls == "1" else {}
    if tls == "1":
        assert {"--tls-cert=/etc/nnunet-tls/tls.crt", "--tls-client-ca=/etc/nnunet-tls/client-ca.crt"} <= set(coord_c["args"])
        assert {"--tls-ca=/etc/nnunet-tls/ca.crt", "--tls-cert=/etc/nnunet-tls/tls.crt"} <= set(worker_c["args"])

    def local(s: str, pod: dict | None = None, c: dict | None = None) -> str:
        s = (s.replace("0.0.0.0:50051", f"127.0.0.1:{port}").replace("0.0.0.0:9464", f"127.0.0.1:{mport}")
             .replace("http://nnunet-coordinator:50051", url).replace("https://nnunet-coordinator:50051", url)
             .replace("/var/lib/nnunet", str(state)).replace("/etc/nnunet/token", str(token))
             .replace("/scratch", str(tmp_path / "scratch")))
        return s.replace("/etc/nnunet-tls", tls_dir(pod, c, secrets)) if "/etc/nnunet-tls" in s else s

    def pod_env(pod: dict, c: dict) -> dict[str, str]:
        return {**env, **cm, **{e["name"]: local(e["value"], pod, c) for e in c.get("env", []) if "value" in e}}

    # the dataset on the "volume", where deploy/README.md puts it
    for cmd in (["synth", "--out", str(tmp_path / "png"), "--cases", "5", "--size", "32"],
                ["convert", "--images", str(tmp_path / "png" / "images"), "--masks", str(tmp_path / "png" / "masks"),
                 "--out", str(state / "datasets"), "--id", "1", "--name", "Example", "--quiet"]):
        r = subprocess.run([str(bin_dir / "nnunet"), *cmd], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(tmp_path / "scratch")}
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("coordinator", "worker")}
    # the coordinator image's ENTRYPOINT is nnunet (deploy/docker/Dockerfile.coordinator)
    coord = subprocess.Popen([str(bin_dir / "nnunet"), *[local(a, coord_pod, coord_c) for a in coord_c["args"]]],
                             stdout=logs["coordinator"], stderr=subprocess.STDOUT, env=env)
    worker = None
    try:
        # the submit Job: waits for the coordinator, submits once
        sub = subprocess.run(["sh", "-c", local(submit_c["args"][0])], env=pod_env(submit_pod, submit_c), capture_output=True, text=True, timeout=120)
        assert sub.returncode == 0, sub.stdout + sub.stderr + (tmp_path / "coordinator.log").read_text()
        # the workers' init container sees the run and lets the worker start
        init = subprocess.run(["sh", "-c", local(init_c["args"][0])], env=pod_env(worker_pod, init_c), capture_output=True, text=True, timeout=60)
        assert init.returncode == 0, init.stdout + init.stderr

        # the worker Job's container, with what kubelet substitutes for $(VAR)
        wenv = {e["name"]: e.get("value", "") for e in worker_c["env"]}
        wenv["NNUNET_WORKER_THREADS"] = "1"  # resourceFieldRef requests.cpu
        wargs = [local(a, worker_pod, worker_c).replace("$(NNUNET_WORKER_DEVICE)", wenv["NNUNET_WORKER_DEVICE"])
                 .replace("$(NNUNET_WORKER_THREADS)", wenv["NNUNET_WORKER_THREADS"]) for a in worker_c["args"]]
        assert "--device=cpu" in wargs and "--exit-when-idle" in wargs
        if tls == "1":
            # mTLS: the same worker without its client certificate is refused (exit 3: the Job fails the index)
            bare = [a for a in wargs if not a.startswith(("--tls-cert=", "--tls-key="))]
            r = subprocess.run([str(bin_dir / "nnunet-worker"), *bare, "--no-shared-fs"], capture_output=True, text=True, timeout=60,
                               env={**env, "TMPDIR": str(tmp_path)})
            assert r.returncode == 3 and "client certificate" in r.stderr, (r.returncode, r.stderr[-2000:])
        worker = subprocess.Popen([str(bin_dir / "nnunet-worker"), *wargs, "--no-shared-fs"], stdout=logs["worker"],
                                  stderr=subprocess.STDOUT, env={**env, "HOME": local(wenv["HOME"]), "TMPDIR": str(tmp_path)})
        rc = worker.wait(timeout=600)
        wlog = (tmp_path / "worker.log").read_text()
        assert rc == 0, wlog[-3000:]
        assert "resuming" not in wlog

        ca = ["--tls-ca", str(secrets["nnunet-worker-tls"] / "ca.crt")] if tls == "1" else []
        st = subprocess.run([str(bin_dir / "nnunet"), "status", "--coordinator", url, "--token-file", str(token), *ca, "--json"],
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
