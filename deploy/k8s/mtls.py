"""The `tls=1` knob of deploy/k8s/values.env: gRPC over TLS with client certificates for the workers
(mTLS). The coordinator serves with the Secret `nnunet-tls` and admits worker connections only with a
certificate its `client-ca.crt` signed; the worker pods present the Secret `nnunet-worker-tls`; the
submit Job and the workers' init container (users' clients: TLS, no client certificate) verify the
coordinator with that Secret's `ca.crt` alone. deploy/README.md ("TLS between workers and the
coordinator") shows how to make both Secrets."""
from __future__ import annotations

PLAIN_URL = "http://nnunet-coordinator:50051"
# What every pod dials: the Service's name, so the coordinator's certificate needs the SAN
# DNS:nnunet-coordinator (the pods share its namespace).
TLS_URL = "https://nnunet-coordinator:50051"
TLS_DIR = "/etc/nnunet-tls"
COORDINATOR_SECRET = "nnunet-tls"
COORDINATOR_KEYS = ("tls.crt", "tls.key", "client-ca.crt")
WORKER_SECRET = "nnunet-worker-tls"
WORKER_KEYS = ("tls.crt", "tls.key", "ca.crt")


def _mount(pod: dict, c: dict, volume: str, secret: str, keys: tuple[str, ...]) -> None:
    """The Secret's `keys` as files in TLS_DIR of container `c` (the pod's volume added once)."""
    if not any(v["name"] == volume for v in pod["volumes"]):
        pod["volumes"].append({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440,
                                                          "items": [{"key": k, "path": k} for k in keys]}})
    c.setdefault("volumeMounts", []).append({"name": volume, "mountPath": TLS_DIR, "readOnly": True})


def _client_env(c: dict) -> None:
    """The pod scripts' `nnunet` calls: the https address, and --tls-ca from NNUNET_TLS_CA."""
    env = c.setdefault("env", [])
    for e in env:
        if e["name"] == "NNUNET_COORDINATOR":
            e["value"] = TLS_URL
    env.append({"name": "NNUNET_TLS_CA", "value": f"{TLS_DIR}/ca.crt"})


def coordinator(pod: dict) -> None:
    c = pod["containers"][0]
    c["args"] += [f"--tls-cert={TLS_DIR}/tls.crt", f"--tls-key={TLS_DIR}/tls.key", f"--tls-client-ca={TLS_DIR}/client-ca.crt"]
    _mount(pod, c, "tls", COORDINATOR_SECRET, COORDINATOR_KEYS)
    # kubelet's gRPC probes speak plaintext HTTP/2 only: a TCP connect to the gRPC port instead
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "grpc" in c.get(probe, {}):
            c[probe].pop("grpc")
            c[probe]["tcpSocket"] = {"port": "grpc"}


def service(svc: dict) -> None:
    # kubernetes.io/h2c names cleartext HTTP/2, which the port no longer speaks
    for p in svc["spec"]["ports"]:
        if p.get("appProtocol") == "kubernetes.io/h2c":
            p.pop("appProtocol")


def workers(pod: dict) -> None:
    c = pod["containers"][0]
    c["args"] = [f"--coordinator={TLS_URL}" if a == f"--coordinator={PLAIN_URL}" else a for a in c["args"]]
    c["args"] += [f"--tls-ca={TLS_DIR}/ca.crt", f"--tls-cert={TLS_DIR}/tls.crt", f"--tls-key={TLS_DIR}/tls.key"]
    _mount(pod, c, "tls", WORKER_SECRET, WORKER_KEYS)
    # the init container runs `nnunet status`, a user's client: the CA only, not the worker's key
    for ic in pod.get("initContainers", []):
        _client_env(ic)
        _mount(pod, ic, "tls-ca", WORKER_SECRET, ("ca.crt",))


def submit(pod: dict) -> None:
    # only the CA: the submit pod is a user's client, it holds no worker certificate
    c = pod["containers"][0]
    _client_env(c)
    _mount(pod, c, "tls-ca", WORKER_SECRET, ("ca.crt",))
