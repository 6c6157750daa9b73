"""A batch job on real parts: images uploaded to Storage under a prefix, one AIImageJob applied
with kubectl, one task per image run by the CPU worker, a partial capture for the images
delivered, and a result manifest behind one signed link; and the same through the user's way
in, ``aijobs submit DIR/ --wait -o OUTDIR/`` (Main API's uploads and batches), run twice: the
second run sends nothing, makes no job and downloads nothing, and says so."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import Jobs, Stack, png, reason

PRICE = 3


def upload(stack: Stack, account: str, prefix: str, images: list[bytes]) -> list[dict[str, Any]]:
    """The images as a user's upload leaves them: committed inputs of the account under the prefix."""
    stored = []
    with stack.admin("storage") as http:
        for n, image in enumerate(images):
            response = http.put(
                f"/v1/objects/{prefix}img-{n:02d}.png",
                params={"account": account, "kind": "input", "state": "committed"},
                content=image,
            )
            response.raise_for_status()
            stored.append(response.json())
    return stored


def batch(
    name: str, account: str, prefix: str | None = None, *, image_list: str | None = None, **spec: Any
) -> dict[str, Any]:
    """A batch job over the images under ``prefix``, or over those image list ``image_list`` names."""
    source = {"prefix": prefix} if prefix is not None else {"imageList": image_list}
    return {
        "apiVersion": "aijobs.io/v1alpha1",
        "kind": "AIImageJob",
        "metadata": {"name": name},
        "spec": {
            "account": account,
            "pipeline": "grayscale",
            "price": PRICE,
            "input": {"batch": source},
            **spec,
        },
    }


def test_a_batch_charges_exactly_the_images_it_delivers(stack: Stack) -> None:
    tenant = stack.tenant(f"b{uuid.uuid4().hex[:8]}", credits=100)
    jobs = Jobs(stack, tenant.namespace)
    prefix = f"{tenant.account}/catalogue/"
    images = [png(20 + n, 12 + n, noise=True) for n in range(6)]
    inputs = upload(stack, tenant.account, prefix, images)
    # Two of the six rot on Storage's disk: the worker gets their bytes zeroed past the PNG
    # signature, cannot decode them, and fails those two images alone. The rot is done to the
    # single read of each: the bulk read of a lease's inputs answers 503, so the worker reads
    # each input alone (its fallback), where the rotten two are.
    rotten = {inputs[1]["id"], inputs[4]["id"]}
    stack.faults(
        "storage",
        [
            {
                "action": "status",
                "status": 503,
                "method": "POST",
                "path": "^/v1/bulk/contents$",
                "name": "no-bulk-read",
            },
            *(
                {
                    "action": "corrupt-body",
                    "method": "GET",
                    "path": f"^/v1/objects/{i}/content$",
                    "name": f"rot-{i}",
                }
                for i in sorted(rotten)
            ),
        ],
    )
    try:
        jobs.apply(batch("catalogue", tenant.account, prefix))
        job = jobs.wait("catalogue", timeout=240)
    finally:
        stack.faults("storage", [])
    fired = {entry["rule"] for entry in stack.fault_log("storage")}
    assert {"no-bulk-read", *(f"rot-{i}" for i in rotten)} <= fired  # the faults hit where intended

    status = job["status"]
    assert status["phase"] == "Delivered", json.dumps(status)[-2000:]
    counts = status["batch"]
    assert (counts["total"], counts["succeeded"], counts["failed"], counts["pending"]) == (6, 4, 2, 0)
    assert counts["progress"] == "4/6"
    assert sorted(f["input"] for f in counts["failures"]) == sorted(rotten)
    # kubectl shows the progress as a column.
    table = jobs.kubectl("get", "aij", "catalogue").stdout
    assert "IMAGES" in table and "4/6" in table

    # The manifest, through the one signed link: a line per input, in key order.
    manifest = httpx.get(status["result"]["url"], timeout=30)
    assert manifest.status_code == 200
    assert hashlib.sha256(manifest.content).hexdigest() == status["result"]["sha256"]
    lines = [json.loads(line) for line in manifest.text.splitlines()]
    assert [line["item"] for line in lines] == list(range(6))
    assert [line["key"] for line in lines] == [i["key"] for i in inputs]
    with stack.admin("storage") as http:
        for line, source in zip(lines, inputs, strict=True):
            assert line["input"] == source["id"]
            if source["id"] in rotten:
                assert line["state"] == "failed" and "corrupt" in line["reason"], line
                continue
            assert line["state"] == "succeeded", line
            result = http.get(f"/v1/objects/{line['result']}/content")
            assert hashlib.sha256(result.content).hexdigest() == line["sha256"]
            assert result.content[:8] == b"\x89PNG\r\n\x1a\n"

    # Money: held 6 x 3, charged 4 x 3, the rest released; nothing left held.
    charges = stack.call("payment", "GET", f"/v1/jobs/{job['metadata']['uid']}/charges")
    assert charges["charged"] == 4 * PRICE
    [hold] = charges["holds"]
    assert (hold["amount"], hold["capturedAmount"], hold["releasedAmount"]) == (
        6 * PRICE,
        4 * PRICE,
        2 * PRICE,
    )
    balance = stack.balance(tenant.account)
    assert (balance["available"], balance["held"]) == (100 - 4 * PRICE, 0)


def test_a_batch_the_account_cannot_pay_for_is_refused_with_the_numbers(stack: Stack) -> None:
    tenant = stack.tenant(f"b{uuid.uuid4().hex[:8]}", credits=10)
    jobs = Jobs(stack, tenant.namespace)
    prefix = f"{tenant.account}/scans/"
    upload(stack, tenant.account, prefix, [png(16, 16, noise=True) for _ in range(4)])
    jobs.apply(batch("scans", tenant.account, prefix, price=5))
    job = jobs.wait("scans", timeout=120)
    assert job["status"]["phase"] == "Failed" and reason(job) == "InsufficientCredits"
    assert "needs 20 credits (4 images x 5)" in job["status"]["message"]
    assert stack.call("payment", "GET", f"/v1/jobs/{job['metadata']['uid']}/charges")["holds"] == []
    balance = stack.balance(tenant.account)
    assert (balance["available"], balance["held"]) == (10, 0)


def test_kubectl_refuses_a_batch_that_also_names_one_image(stack: Stack) -> None:
    tenant = stack.tenant(f"b{uuid.uuid4().hex[:8]}", credits=10)
    jobs = Jobs(stack, tenant.namespace)
    both = batch("both", tenant.account, f"{tenant.account}/x/")
    both["spec"]["input"]["url"] = "https://example.com/a.png"
    refused = jobs.kubectl("apply", "-f", "-", stdin=json.dumps(both), check=False)
    assert refused.returncode != 0
    assert "input needs exactly one of storageRef, url, inline or batch" in refused.stderr
    single = {
        "apiVersion": "aijobs.io/v1alpha1",
        "kind": "AIImageJob",
        "metadata": {"name": "single"},
        "spec": {
            "account": tenant.account,
            "pipeline": "grayscale",
            "price": 1,
            "input": {"url": "https://example.com/a.png"},
            "maxFailedImages": 1,
        },
    }
    refused = jobs.kubectl("apply", "-f", "-", stdin=json.dumps(single), check=False)
    assert "maxFailedImages applies only to a batch (input.batch)" in refused.stderr
    assert jobs.get("both") is None and jobs.get("single") is None  # nothing made, nothing to charge


# ----------------------------------------------------------------- aijobs submit DIR/ (the CLI)
GRAYSCALE_PRICE = 1  # Main API's default price list


def _aijobs(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIJOBS_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "aijobs.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_a_folder_runs_as_one_batch_on_the_real_stack_and_a_second_run_repeats_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    tenant = stack.tenant(f"c{uuid.uuid4().hex[:8]}", credits=10)
    token = tmp_path / "token"
    token.write_text(tenant.token + "\n")
    config = tmp_path / "config.toml"
    services = "\n".join(f'{name} = "{proc.url}"' for name, proc in stack.services.items())
    config.write_text(f'[services]\n{services}\n[user]\ntoken_file = "{token}"\n')
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    for n in range(3):
        (folder / f"img-{n}.png").write_bytes(png(20 + n, 12 + n, noise=True))
    command = ("submit", str(folder), "--pipeline", "grayscale", "--wait", "-o", str(out))

    first = _aijobs(config, *command)
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    assert "uploaded 3 images" in first.stderr and "images 3/3 done" in first.stderr
    assert "delivered 3 of 3 images" in first.stdout and "charged 3 credits" in first.stdout
    assert sorted(p.name for p in out.iterdir()) == ["img-0.png", "img-1.png", "img-2.png"]
    written = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert stack.balance(tenant.account) == {
        "id": tenant.account,
        "available": 10 - 3 * GRAYSCALE_PRICE,
        "held": 0,
        "balance": 10 - 3 * GRAYSCALE_PRICE,
    }

    again = _aijobs(config, *command)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert "uploaded 0 images" in again.stderr and "already submitted" in again.stderr
    assert "0 downloaded, 3 there already" in again.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == written
    assert stack.balance(tenant.account)["available"] == 10 - 3 * GRAYSCALE_PRICE
