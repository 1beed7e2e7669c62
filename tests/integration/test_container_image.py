"""Build the Containerfile and run qemuvm in it, where a container engine works on this machine; where none
does, say why and skip (tests/unit/test_containerfile.py still checks the file). Without a registry, the
base image may be made locally first (the Containerfile's header says how); QEMUVM_CONTAINER_BASE names it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/qemuvm-test:latest"


def _engine() -> str:
    reasons = []
    for engine in ("podman", "docker"):
        if shutil.which(engine) is None:
            reasons.append(f"{engine}: not installed")
            continue
        probe = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode == 0:
            return engine
        reasons.append(f"{engine}: {(probe.stderr.strip().splitlines() or ['info failed'])[-1]}")
    pytest.skip("no container engine works here (" + "; ".join(reasons) + ")")


def test_the_image_builds_and_runs_qemuvm() -> None:
    engine = _engine()
    base = os.environ.get("QEMUVM_CONTAINER_BASE")
    build = [engine, "build", "-t", TAG, "-f", str(REPO / "Containerfile"), *(["--from", base] if base else [])]
    if engine == "podman":
        build += ["--isolation", "chroot"]  # builds without an OCI runtime's cgroups (hybrid hosts)
    cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():  # this host reaches PyPI through a proxy with its own CA: so does the build
        build += ["--volume", f"{cert}:/run/build-ca.crt:ro", "--build-arg", "PIP_CERT=/run/build-ca.crt"]
    build.append(str(REPO))
    built = subprocess.run(build, capture_output=True, text=True, timeout=1800, check=False)
    if built.returncode != 0 and "docker.io/library/debian" in built.stderr and not base:
        pytest.skip(f"the base image cannot be pulled here (no registry): {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    try:
        run = [engine, "run", "--rm", TAG]
        version = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=300, check=False)
        if version.returncode != 0 and "OCI permission denied" in version.stderr and engine == "podman":
            # This host's sandbox refuses the OCI runtime its rlimits: run the image's own files through
            # chroot instead (root only), which is what the runtime would do minus the isolation.
            mount = subprocess.run([engine, "image", "mount", TAG], capture_output=True, text=True, check=True)
            run = ["chroot", mount.stdout.strip()]
            version = subprocess.run([*run, "qemuvm", "--version"], capture_output=True, text=True, timeout=300,
                                     check=False)
            run.append("qemuvm")
        assert version.returncode == 0 and version.stdout.startswith("qemuvm "), version.stderr
        doctor = subprocess.run([*run, "doctor", "--json"], capture_output=True, text=True, timeout=300,
                                check=False)
        checks = {check["name"]: check for check in json.loads(doctor.stdout)}
        assert checks["QEMU"]["status"] == "ok" and checks["qemu-img"]["status"] == "ok", checks
    finally:
        subprocess.run([engine, "image", "unmount", TAG], capture_output=True, timeout=60, check=False)
        subprocess.run([engine, "rmi", "-f", TAG], capture_output=True, timeout=300, check=False)
