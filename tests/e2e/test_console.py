"""Onboarding a tenant and running a job with the commands the README shows, against the real
API server, the services and the operator: ``aijobs admin …`` for the platform team,
``aijobs submit`` / ``aijobs jobs …`` for the user. No curl, no hand-signed token."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aijobs_dev.testbed.stack import Stack
from kubernetes import client as k8s

from aijobs.kube import api_client
from tests.e2e.conftest import eventually, png

GRAYSCALE_PRICE = 1


class Console:
    def __init__(self, stack: Stack, config: Path) -> None:
        self.stack, self.config = stack, config

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "AIJOBS_CONFIG": str(self.config), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "aijobs.cli", *args], capture_output=True, text=True, env=full, timeout=180
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, (
            f"aijobs {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args).stdout)


def _config(stack: Stack, folder: Path, admin: str, user: str = "") -> Path:
    path = folder / f"config-{uuid.uuid4().hex[:6]}.toml"
    services = "\n".join(f'{name} = "{proc.url}"' for name, proc in stack.services.items())
    path.write_text(
        f'kubeconfig = "{stack.kubeconfig}"\n[services]\n{services}\n[admin]\n{admin}\n[user]\n{user}\n'
    )
    return path


@pytest.fixture(scope="module")
def console(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    folder = tmp_path_factory.mktemp("console")
    secret = folder / "admin-secret"
    secret.write_text(stack.secrets["admin"] + "\n")
    token = folder / "token"
    cli = Console(stack, _config(stack, folder, f'secret_file = "{secret}"', f'token_file = "{token}"'))
    yield cli
    # CreditAccounts are cluster-wide: leave none behind for the next module's operator.
    custom = k8s.CustomObjectsApi(api_client(stack.kubeconfig))
    for item in custom.list_cluster_custom_object("aijobs.io", "v1alpha1", "creditaccounts")["items"]:
        cli.run("admin", "tenant", "delete", item["metadata"]["name"])


def _account_status(stack: Stack, name: str) -> dict[str, Any]:
    custom = k8s.CustomObjectsApi(api_client(stack.kubeconfig))
    body = custom.get_cluster_custom_object("aijobs.io", "v1alpha1", "creditaccounts", name)
    return dict(body.get("status") or {})


def test_a_tenant_onboarded_with_the_admin_commands_runs_a_job_submitted_with_aijobs_submit(
    stack: Stack, console: Console, tmp_path: Path
) -> None:
    account, namespace = f"acme{uuid.uuid4().hex[:6]}", f"team-{uuid.uuid4().hex[:6]}"
    stack.namespace(namespace)

    # The platform team: a CreditAccount object, made real by the operator in Auth and Payment.
    created = console.ok("admin", "tenant", "create", account, "--namespace", namespace).stdout
    assert account in created and "True" in created  # printed once Ready
    assert stack.call("auth", "GET", f"/v1/tenants/{account}") == {"id": account}
    bindings = stack.call("auth", "GET", f"/v1/bindings?account={account}")["items"]
    assert bindings == [{"namespace": namespace, "account": account}]
    assert stack.balance(account) == {"id": account, "available": 0, "held": 0, "balance": 0}

    # Credits, once, even when the command is run again with the key it printed.
    first = console.json("admin", "-o", "json", "top-up", account, "50", "--reason", "welcome credits")
    assert first["account"]["available"] == 50 and not first["replayed"]
    again = console.json(
        "admin", "-o", "json", "top-up", account, "50", "--reason", "welcome credits",
        "--idempotency-key", first["idempotencyKey"],
    )  # fmt: skip
    assert again["replayed"] and again["transaction"] == first["transaction"]
    assert stack.balance(account)["available"] == 50
    ledger = console.json("admin", "-o", "json", "ledger", account)["items"]
    assert [e["kind"] for e in ledger] == ["top-up"]
    trail = console.json("admin", "-o", "json", "audit", "--service", "payment")
    assert any(i["action"] == "account.top-up" and i["detail"]["reason"] == "welcome credits" for i in trail)
    whole = console.json("admin", "-o", "json", "audit", "--service", "payment", "--all")
    assert len(whole) >= len(trail) and len({i["id"] for i in whole}) == len(whole)
    assert "already done" in console.ok(
        "admin", "top-up", account, "50", "--reason", "welcome credits",
        "--idempotency-key", first["idempotencyKey"],
    ).stdout  # fmt: skip

    # kubectl shows the balance in the CreditAccount's columns (the operator reads it back).
    eventually(lambda: _account_status(stack, account).get("available") == 50, what="balance in status")
    columns = subprocess.run(
        ["kubectl", f"--kubeconfig={stack.kubeconfig}", "get", "creditaccounts", account],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert columns.split("\n")[0].split()[:6] == [
        "NAME",
        "AVAILABLE",
        "HELD",
        "BALANCE",
        "IN-FLIGHT",
        "READY",
    ]
    assert columns.split("\n")[1].split()[:6] == [account, "50", "0", "50", "0", "True"]

    # A user and their token, written to the file the user's configuration names.
    console.ok("admin", "user", "create", f"{account}-alice", "--tenant", account)
    token_file = Path(console.config.read_text().split('token_file = "')[1].split('"')[0])
    token_file.write_text("a token from before\n")  # an existing, world-readable file
    token_file.chmod(0o644)
    console.ok("admin", "token", "issue", "--user", f"{account}-alice", "--write", str(token_file))
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert token_file.read_text().startswith("aij_")

    # The user submits, waits, and gets the result; exit code 0 means Delivered.
    image = tmp_path / "in.png"
    image.write_bytes(png(32, 20))
    out = tmp_path / "out.png"
    # Storage refuses the upload step three times: the progress says which step retries, and why
    # (the backoff before the third retry is at least 2 s: a 1-s poll sees it however slow).
    stack.faults(
        "storage",
        [
            {
                "action": "status",
                "status": 503,
                "method": "POST",
                "path": "^/v1/objects/[^/]+/commit$",
                "times": 3,
            }
        ],
    )
    try:
        done = console.ok("submit", str(image), "--pipeline", "grayscale", "--wait", "-o", str(out))
    finally:
        stack.faults("storage", [])
    assert "phase Delivered" in done.stderr and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "upload retrying (attempt" in done.stderr and "failed: storage: POST" in done.stderr, done.stderr
    assert "503" in done.stderr, done.stderr
    job_id = done.stdout.split()[1].rstrip(":")
    assert stack.balance(account) == {"id": account, "available": 49, "held": 0, "balance": 49}

    def listed() -> bool:  # the operator reads the balance back within its sync interval
        out = console.ok("admin", "tenant", "list").stdout.splitlines()
        return out[0].split()[:5] == ["NAME", "AVAILABLE", "HELD", "BALANCE", "IN-FLIGHT"] and any(
            line.split()[:6] == [account, "49", "0", "49", "0", namespace] for line in out
        )

    eventually(listed, 30, "aijobs admin tenant list showing the charge")

    # Running the same command again finds the same job: no second job, no second charge.
    again_proc = console.ok("submit", str(image), "--pipeline", "grayscale")
    assert "already submitted" in again_proc.stderr and again_proc.stdout.strip() == job_id
    listed = console.json("jobs", "list", "--json")["items"]
    assert [j["id"] for j in listed] == [job_id]
    assert stack.balance(account)["available"] == 49

    # What an admin sees of it: the saga log beside every service's records.
    explained = console.ok("admin", "job", "explain", f"{namespace}/{job_id}").stdout
    assert f"charged {GRAYSCALE_PRICE}" in explained and "disagreements now: none" in explained


def test_a_tenant_claiming_a_namespace_another_account_holds_is_told_who_holds_it(
    stack: Stack, console: Console
) -> None:
    holder, late, namespace = (
        f"acme{uuid.uuid4().hex[:6]}",
        f"evil{uuid.uuid4().hex[:6]}",
        f"team-{uuid.uuid4().hex[:6]}",
    )
    stack.namespace(namespace)
    console.ok("admin", "tenant", "create", holder, "--namespace", namespace)
    refused = console.run("admin", "tenant", "create", late, "--namespace", namespace)
    # Said at once (no wait for the command's timeout), naming the account that holds it.
    assert refused.returncode != 0 and "NamespaceTaken" in refused.stderr and holder in refused.stderr
    assert stack.call("auth", "GET", f"/v1/bindings?account={late}")["items"] == []
    listing = console.ok("admin", "tenant", "list").stdout
    assert any(late in line and "NamespaceTaken" in line for line in listing.splitlines())


def test_bad_input_is_refused_with_a_reason_and_nothing_is_charged(
    stack: Stack, console: Console, tmp_path: Path
) -> None:
    account, namespace = f"bad{uuid.uuid4().hex[:6]}", f"team-{uuid.uuid4().hex[:6]}"
    stack.namespace(namespace)
    console.ok("admin", "tenant", "create", account, "--namespace", namespace)
    console.ok("admin", "top-up", account, "5", "--reason", "test")
    console.ok("admin", "user", "create", f"{account}-bob", "--tenant", account)
    issued = console.json("admin", "-o", "json", "token", "issue", "--user", f"{account}-bob")
    user = {"AIJOBS_TOKEN": issued["token"]}
    image = tmp_path / "in.png"
    image.write_bytes(png())

    past = console.run(
        "submit", str(image), "--pipeline", "grayscale", "--run-at", "2020-01-01T00:00:00Z", env=user
    )
    assert past.returncode == 2 and "runAt" in past.stderr, past.stderr
    unreadable = tmp_path / "missing.png"
    missing = console.run("submit", str(unreadable), "--pipeline", "grayscale", env=user)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    negative = console.run("admin", "top-up", account, "-5", "--reason", "oops")
    assert negative.returncode == 2 and "amount" in negative.stderr, negative.stderr
    no_reason = console.run("admin", "top-up", account, "5")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    bad_name = console.run("admin", "tenant", "create", "Not_A_Name", "--no-wait")
    assert bad_name.returncode == 2 and "account id" in bad_name.stderr, bad_name.stderr
    assert stack.balance(account) == {"id": account, "available": 5, "held": 0, "balance": 5}
    assert json.loads(console.ok("jobs", "list", "--json", env=user).stdout)["items"] == []

    # A revoked token opens nothing any more.
    assert "revoked" in console.ok("admin", "token", "revoke", issued["id"]).stdout
    refused = console.run("jobs", "list", env=user)
    assert refused.returncode == 2 and "401" in refused.stderr, refused.stderr


def test_a_cancelled_job_returns_its_held_credits(stack: Stack, console: Console, tmp_path: Path) -> None:
    account, namespace = f"cxl{uuid.uuid4().hex[:6]}", f"team-{uuid.uuid4().hex[:6]}"
    stack.namespace(namespace)
    console.ok("admin", "tenant", "create", account, "--namespace", namespace)
    console.ok("admin", "top-up", account, "20", "--reason", "test")
    console.ok("admin", "user", "create", f"{account}-carol", "--tenant", account)
    token = console.json("admin", "-o", "json", "token", "issue", "--user", f"{account}-carol")["token"]
    user = {"AIJOBS_TOKEN": token}
    image = tmp_path / "in.png"
    image.write_bytes(png())

    job_id = console.ok(
        "submit", str(image), "--pipeline", "grayscale", "--run-at", "+2h", env=user
    ).stdout.strip()
    eventually(lambda: stack.balance(account)["held"] == GRAYSCALE_PRICE, what="credits held for the job")
    cancelled = console.ok("jobs", "cancel", job_id, env=user)
    assert "cancelled" in cancelled.stdout
    eventually(
        lambda: stack.balance(account) == {"id": account, "available": 20, "held": 0, "balance": 20},
        timeout=60,
        what="held credits returned",
    )
    gone = console.run("jobs", "get", job_id, env=user)
    assert gone.returncode == 2 and "Unknown job" in gone.stderr


def test_unbinding_and_deleting_a_tenant_stops_its_namespaces_charging_and_keeps_its_ledger(
    stack: Stack, console: Console
) -> None:
    account, namespace = f"bye{uuid.uuid4().hex[:6]}", f"team-{uuid.uuid4().hex[:6]}"
    console.ok("admin", "tenant", "create", account, "--namespace", namespace)
    console.ok("admin", "bind", f"{namespace}-b", "--account", account)
    bound = {b["namespace"] for b in stack.call("auth", "GET", f"/v1/bindings?account={account}")["items"]}
    assert bound == {namespace, f"{namespace}-b"}
    console.ok("admin", "unbind", namespace, "--account", account)
    bound = {b["namespace"] for b in stack.call("auth", "GET", f"/v1/bindings?account={account}")["items"]}
    assert bound == {f"{namespace}-b"}
    console.ok("admin", "top-up", account, "7", "--reason", "test")
    deleted = console.ok("admin", "tenant", "delete", account)
    assert "ledger stay" in deleted.stdout
    assert stack.call("auth", "GET", f"/v1/bindings?account={account}")["items"] == []
    assert stack.balance(account)["available"] == 7
    operator_trail = console.json("admin", "-o", "json", "audit", "--service", "auth")
    assert any(i["caller"] == "operator" and i["action"] == "binding.delete" for i in operator_trail)


def test_admin_credentials_come_from_the_clusters_secret_or_the_command_says_what_is_missing(
    stack: Stack, console: Console, tmp_path: Path
) -> None:
    core = k8s.CoreV1Api(api_client(stack.kubeconfig))
    name = f"callers-{uuid.uuid4().hex[:6]}"
    data = base64.b64encode(json.dumps({"admin": stack.secrets["admin"]}).encode()).decode()
    core.create_namespaced_secret(
        "default", k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), data={"callers": data})
    )
    try:
        from_secret = Console(stack, _config(stack, tmp_path, f'secret_ref = "default/{name}"'))
        listed = from_secret.json("admin", "-o", "json", "balance")
        assert isinstance(listed, list)
    finally:
        core.delete_namespaced_secret(name, "default")

    nothing = Console(stack, _config(stack, tmp_path, ""))
    proc = nothing.run("admin", "balance")
    assert proc.returncode == 2 and "no admin credentials" in proc.stderr and "Traceback" not in proc.stderr
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret")
    forged = Console(stack, _config(stack, tmp_path, f'secret_file = "{wrong}"'))
    proc = forged.run("admin", "top-up", "anyone", "5", "--reason", "forged")
    assert proc.returncode == 2 and "401" in proc.stderr
