"""``aijobs demo``: the main job, end to end, on one machine.

A real control plane (etcd + kube-apiserver), the five services (SQLite, the embedded default),
the operator and a CPU worker, all as real processes. A tenant with 100 credits submits a real
image twice: with ``kubectl apply`` and through Main API. Each job goes Pending -> Charged ->
Uploaded -> Scheduled -> Processed -> Delivered; the result is downloaded through its signed link
and the balance shows one charge per job. Then a batch: five images under one Storage prefix, one
job for all, charged per image delivered, its result manifest behind one link. Then a job the
tenant can't afford fails and costs nothing.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from aijobs.api.rules import TERMINAL_PHASES
from aijobs.crds import install_crds
from aijobs.kube import api_client
from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.testbed.stack import Stack


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _picture() -> bytes:
    """A 48x32 picture with edges and text, so that upscaling has something to do."""
    from PIL import ImageDraw

    image = Image.linear_gradient("L").convert("RGB").resize((48, 32))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, 20, 20), outline=(255, 40, 40), width=2)
    draw.text((24, 10), "AI", fill=(20, 20, 220))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _striped() -> bytes:
    """Another small picture: vertical stripes."""
    image = Image.new("RGB", (40, 30), (240, 240, 240))
    for x in range(0, 40, 4):
        for y in range(30):
            image.putpixel((x, y), (30, 90, 200))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def side_by_side(original: bytes, upscaled: bytes, out: Path, zoom: int = 4) -> None:
    """The input upscaled x2 with bicubic beside the model's x2, each enlarged ``zoom`` times
    (nearest neighbour, so a person sees the pixels each method made), labelled."""
    from PIL import ImageDraw

    source = Image.open(io.BytesIO(original)).convert("RGB")
    ours = Image.open(io.BytesIO(upscaled)).convert("RGB")
    bicubic = source.resize(ours.size, Image.Resampling.BICUBIC)
    w, h = ours.width * zoom, ours.height * zoom
    canvas = Image.new("RGB", (2 * w + zoom * 4, h + 16), "white")
    for i, (label, image) in enumerate((("bicubic", bicubic), ("aijobs upscale-x2", ours))):
        x = i * (w + zoom * 4)
        canvas.paste(image.resize((w, h), Image.Resampling.NEAREST), (x, 16))
        ImageDraw.Draw(canvas).text((x + 2, 2), label, fill=(0, 0, 0))
    canvas.save(out, "PNG")


class Demo:
    def __init__(self, stack: Stack, namespace: str) -> None:
        self.stack, self.namespace = stack, namespace

    def kubectl(self, *args: str, stdin: str | None = None, show: bool = True) -> str:
        argv = ["kubectl", f"--kubeconfig={self.stack.kubeconfig}", f"--namespace={self.namespace}", *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        if show:
            print(f"$ kubectl {' '.join(args)}")
            sys.stdout.write(proc.stdout + proc.stderr)
        if proc.returncode != 0 and show:
            raise SystemExit(f"kubectl failed: {proc.stderr}")
        return proc.stdout

    def follow(self, name: str, timeout: float = 120) -> dict[str, Any]:
        """Print each phase the job passes through (from its status and its events)."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = json.loads(self.kubectl("get", "aij", name, "-o", "json", show=False))
            status = job.get("status") or {}
            steps = [
                c["type"]
                for c in status.get("conditions", [])
                if c["status"] == "True"
                and c["type"] in ("Charged", "Uploaded", "Scheduled", "Processed", "Delivered")
            ]
            for phase in ["Pending", *steps] if status.get("phase") else []:
                if phase not in seen:
                    seen.add(phase)
                    print(f"   {name}: {phase}")
            if status.get("phase") in TERMINAL_PHASES:
                print(f"   {name}: {status['phase']} — {status.get('message')}")
                return job
            time.sleep(0.2)
        raise SystemExit(f"{name} did not finish in {timeout:.0f}s")


def demo_home() -> Path:
    """Where the demo keeps what it shows the user (the result image): one fixed place, replaced on
    every run, so repeated demos leave nothing behind."""
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "aijobs" / "demo"


def run_demo(*, keep: bool = False) -> int:
    home = demo_home()
    home.mkdir(parents=True, exist_ok=True)
    for stale in home.glob("run-*"):  # what a run left running with --keep, or a killed run left
        ControlPlane(stale / "controlplane").stop()
        shutil.rmtree(stale, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=home))
    plane = ControlPlane(root / "controlplane")
    _say("starting a local control plane (etcd + kube-apiserver) and installing the AIImageJob CRD")
    plane.start()
    stack = Stack(root, plane.kubeconfig, lambda name: f"sqlite:///{root}/{name}.db")
    try:
        install_crds(api_client(plane.kubeconfig))
        _say("starting Auth, Payment, Storage, AI and Main API (SQLite), the operator and a CPU worker")
        stack.start_services()
        stack.start_operator()
        stack.start_worker()
        tenant = stack.tenant("acme", credits=100, namespace="acme-jobs", user="alice")
        print(f"   tenant acme: namespace acme-jobs, user alice, balance {stack.balance('acme')}")
        demo = Demo(stack, tenant.namespace)
        picture = _picture()

        _say("1. a job applied with kubectl: upscale a 48x32 image with the learned model, 10 credits")
        manifest: dict[str, Any] = {
            "apiVersion": "aijobs.io/v1alpha1",
            "kind": "AIImageJob",
            "metadata": {"name": "upscale-demo"},
            "spec": {
                "account": "acme",
                "pipeline": "upscale-x2",
                "price": 10,
                "input": {"inline": {"contentType": "image/png", "data": base64.b64encode(picture).decode()}},
            },
        }
        demo.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        job = demo.follow("upscale-demo")
        demo.kubectl("get", "aij")
        result = httpx.get(job["status"]["result"]["url"], timeout=10)
        size = Image.open(io.BytesIO(result.content)).size
        (home / "upscaled.png").write_bytes(result.content)
        print(
            f"   downloaded the result through its signed link: {size[0]}x{size[1]} PNG "
            f"-> {home / 'upscaled.png'}"
        )
        side_by_side(picture, result.content, home / "compare.png")
        print(f"   side by side, bicubic | the model (pixels enlarged 4x): {home / 'compare.png'}")
        print(f"   balance now: {stack.balance('acme')}")

        _say("2. the same through Main API: alice uploads an image with her token")
        main = stack.services["main"].url
        auth = {"Authorization": f"Bearer {tenant.token}", "Idempotency-Key": "demo-thumbnail-1"}
        files = {"file": ("photo.png", picture, "image/png")}
        form = {"pipeline": "thumbnail", "parameters": json.dumps({"size": 24})}
        print(
            f"$ curl -H 'Authorization: Bearer aij_…' -H 'Idempotency-Key: demo-thumbnail-1' "
            f"-F pipeline=thumbnail -F 'parameters={form['parameters']}' -F file=@photo.png {main}/v1/jobs"
        )
        submitted = httpx.post(f"{main}/v1/jobs", headers=auth, data=form, files=files, timeout=30)
        print(f"   {submitted.status_code}: job {submitted.json()['id']}, phase {submitted.json()['phase']}")
        retried = httpx.post(f"{main}/v1/jobs", headers=auth, data=form, files=files, timeout=30)
        print(
            f"   the same request again (a client retry): {retried.status_code}, same job "
            f"{retried.json()['id'] == submitted.json()['id']}"
        )
        view = demo.follow(submitted.json()["id"])
        thumb = Image.open(io.BytesIO(httpx.get(view["status"]["result"]["url"], timeout=10).content)).size
        print(f"   result: a {thumb[0]}x{thumb[1]} thumbnail; balance now: {stack.balance('acme')}")

        _say("3. a batch: five images uploaded under one prefix, one job for all, 2 credits an image")
        prefix = "acme/demo-set/"
        with stack.admin("storage") as storage:
            for n in range(5):
                image = _picture() if n != 2 else _striped()
                storage.put(
                    f"/v1/objects/{prefix}photo-{n}.png",
                    params={"account": "acme", "kind": "input", "state": "committed"},
                    content=image,
                ).raise_for_status()
        print(f"   uploaded photo-0.png … photo-4.png to Storage under {prefix}")
        batch = {
            "apiVersion": "aijobs.io/v1alpha1",
            "kind": "AIImageJob",
            "metadata": {"name": "batch-demo"},
            "spec": {
                "account": "acme",
                "pipeline": "thumbnail",
                "parameters": {"size": 16},
                "price": 2,
                "input": {"batch": {"prefix": prefix}},
            },
        }
        before = stack.balance("acme")["available"]
        demo.kubectl("apply", "-f", "-", stdin=json.dumps(batch))
        done = demo.follow("batch-demo")
        demo.kubectl("get", "aij", "batch-demo")
        lines = httpx.get(done["status"]["result"]["url"], timeout=10).text.splitlines()
        print(f"   the result manifest, through its signed link ({len(lines)} lines, one per image):")
        for line in lines[:2]:
            print(f"     {line}")
        spent = before - stack.balance("acme")["available"]
        print(f"   charged {spent} credits for {done['status']['batch']['succeeded']} images delivered")

        _say("4. a job acme can't afford fails at the charge and costs nothing")
        pricey = {
            **manifest,
            "metadata": {"name": "too-expensive"},
            "spec": {**manifest["spec"], "price": 1000},
        }
        demo.kubectl("apply", "-f", "-", stdin=json.dumps(pricey))
        demo.follow("too-expensive")
        print(f"   balance unchanged: {stack.balance('acme')}")

        # A job that went well posts no Event (they are for warnings): its story is its saga log.
        _say("the story of the first job, as kubectl describe tells it (its saga log)")
        described = demo.kubectl("describe", "aij", "upscale-demo", show=False)
        print(described[described.find("  Steps:") : described.find("Events:")])
        if keep:
            _say(
                f"left running: export KUBECONFIG={plane.kubeconfig}; logs in {stack.logs} "
                "(the next `aijobs demo` stops it and removes its files)"
            )
            return 0
    finally:
        if not keep:
            stack.stop()
            plane.stop()
            shutil.rmtree(root, ignore_errors=True)
    _say(
        f"demo finished; everything was stopped and removed except the result, {home / 'upscaled.png'}, "
        f"and a side-by-side picture, {home / 'compare.png'}"
    )
    return 0
