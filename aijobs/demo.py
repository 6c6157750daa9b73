"""``aijobs demo``: the main job, end to end, on one machine.

Starts a real control plane (etcd + kube-apiserver), installs the AIImageJob CRD, applies the
example jobs with kubectl and shows what a user sees. Later stages of the project add the
services, the operator and a worker, so that the same command takes a job through every phase.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from aijobs.controlplane.cluster import ControlPlane
from aijobs.crds import CRD_DIR, install_crds
from aijobs.kube import api_client

EXAMPLES = CRD_DIR.parent / "examples"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _kubectl(kubeconfig: Path, *args: str) -> None:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    proc = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], text=True, capture_output=True)
    sys.stdout.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)


def run_demo(*, keep: bool = False) -> int:
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix="aijobs-demo-")) / "controlplane")
    _say("starting a local control plane (etcd + kube-apiserver)")
    plane.start()
    try:
        install_crds(api_client(plane.kubeconfig))
        kc = plane.kubeconfig
        _kubectl(kc, "version")
        _say("the AIImageJob resource, as kubectl explains it")
        _kubectl(kc, "explain", "aij.spec.input")
        _say("applying the example jobs")
        _kubectl(kc, "apply", "-f", str(EXAMPLES))
        _kubectl(kc, "get", "aij")
        _say("a bad manifest is refused before anything is stored or charged")
        bad = (EXAMPLES / "resize-url.yaml").read_text().replace("price: 3", "price: 0")
        print("$ kubectl apply -f - # resize-url.yaml with price: 0", flush=True)
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={kc}", "apply", "-f", "-"], input=bad, text=True, capture_output=True
        )
        sys.stdout.write(proc.stderr)
        if keep:
            _say(f"left running: export KUBECONFIG={kc}  (stop: aijobs controlplane down --dir {plane.root})")
            return 0
    finally:
        if not keep:
            plane.stop()
    _say("demo finished; the control plane was stopped and its files removed")
    return 0
