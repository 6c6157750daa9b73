"""``aijobs admin``: onboard tenants and move credits without curl or hand-signed tokens.

Tenants are CreditAccount objects (desired state, reconciled by the operator into Auth and
Payment); money movements are idempotent calls to Payment, each in its admin audit trail."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from aijobs.api.auth import IssuedToken, TokenInfo, User
from aijobs.api.main import AdminJob
from aijobs.api.payment import Account, AccountList, LedgerPage, TopUp
from aijobs.api.tenancy import ACCOUNT_API_VERSION, ACCOUNT_KIND, ACCOUNT_PLURAL
from aijobs.api.v1alpha1 import GROUP, VERSION
from aijobs.console.config import Config, PrivateFile
from aijobs.console.http import Api, CommandError, new_key
from aijobs.wire.tokens import TokenSigner

__all__ = ["add_admin_parser", "answer", "emit", "fetch", "table", "wire"]

M = TypeVar("M", bound=BaseModel)


# -- output ------------------------------------------------------------------------------------
def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.output == "json" else text(data))


def wire(model: BaseModel) -> dict[str, Any]:
    """An answer as the service sent it (``--json`` prints this)."""
    return model.model_dump(by_alias=True, mode="json", exclude_unset=True)


# -- answers -----------------------------------------------------------------------------------
def answer(response: httpx.Response, into: type[M]) -> M:
    """A service's answer read as its wire model (:mod:`aijobs.api`); one that does not fit is the
    service's fault, said as such rather than as a KeyError deep in a command."""
    try:
        return into.model_validate_json(response.content)
    except ValidationError as exc:
        raise CommandError(
            f"{response.request.method} {response.request.url.path} answered a body that is not "
            f"a {into.__name__}: {exc}"
        ) from exc


def fetch(api: Api, into: type[M], method: str, path: str, **kw: Any) -> M:
    return answer(api.request(method, path, **kw), into)


# -- edges -------------------------------------------------------------------------------------
def _service(cfg: Config, name: str) -> Api:
    signer = TokenSigner("admin", cfg.admin_secret())
    return Api(name, cfg.url(name), lambda: signer.token_for(name))


def _custom(cfg: Config) -> k8s.CustomObjectsApi:
    from aijobs.kube import api_client

    return k8s.CustomObjectsApi(api_client(cfg.kubeconfig))


def _kube_error(exc: ApiException) -> CommandError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        message = exc.reason
    return CommandError(f"Kubernetes: {exc.status} {message}")


def _kube(call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    try:
        return call(*args, **kw)
    except ApiException as exc:
        raise _kube_error(exc) from exc


def _get_account(custom: k8s.CustomObjectsApi, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], _kube(custom.get_cluster_custom_object, GROUP, VERSION, ACCOUNT_PLURAL, name))


def _ready(body: dict[str, Any]) -> tuple[bool, str]:
    status = body.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond["type"] == "Ready":
            current = status.get("observedGeneration") == body["metadata"].get("generation")
            return cond["status"] == "True" and current, cond.get("message") or cond.get("reason") or ""
    return False, "the operator has not synced it yet (is the operator running?)"


def _wait_ready(custom: k8s.CustomObjectsApi, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = _get_account(custom, name)
        ok, why = _ready(body)
        if ok:
            return body
        # Stalled: waiting will not change it, a person must act (the message says how).
        status = body.get("status") or {}
        conditions = status.get("conditions") or []
        stalled: dict[str, Any] = next((c for c in conditions if c["type"] == "Stalled"), {})
        current = status.get("observedGeneration") == body["metadata"].get("generation")
        if current and stalled.get("status") == "True":
            raise CommandError(f"CreditAccount {name} is not Ready ({stalled.get('reason')}): {why}")
        if time.monotonic() > deadline:
            raise CommandError(f"CreditAccount {name} not Ready after {timeout:.0f}s: {why}")
        time.sleep(0.5)  # polling the object's status, bounded by the deadline above


def _account_row(body: dict[str, Any]) -> list[Any]:
    status = body.get("status") or {}
    ok, _ = _ready(body)
    # As kubectl's columns: the Ready condition's reason and message (NamespaceTaken names the
    # account that holds the namespace).
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return [
        body["metadata"]["name"],
        status.get("available"),
        status.get("held"),
        status.get("balance"),
        status.get("jobsInFlight"),
        ",".join((body.get("spec") or {}).get("namespaces") or []) or "-",
        "True" if ok else "False",
        ready.get("reason") or "-",
        ready.get("message") or "",
    ]


ACCOUNT_HEADER = [
    "NAME",
    "AVAILABLE",
    "HELD",
    "BALANCE",
    "IN-FLIGHT",
    "NAMESPACES",
    "READY",
    "REASON",
    "MESSAGE",
]


# -- tenants -----------------------------------------------------------------------------------
def tenant_create(args: argparse.Namespace, cfg: Config) -> int:
    custom = _custom(cfg)
    spec: dict[str, Any] = {"namespaces": sorted(set(args.namespace or []))}
    if args.description:
        spec["description"] = args.description
    body = {
        "apiVersion": ACCOUNT_API_VERSION,
        "kind": ACCOUNT_KIND,
        "metadata": {"name": args.name},
        "spec": spec,
    }
    _kube(custom.create_cluster_custom_object, GROUP, VERSION, ACCOUNT_PLURAL, body)
    if not args.no_wait:
        body = _wait_ready(custom, args.name, args.timeout)
    emit(args, body, lambda b: table([_account_row(b)], ACCOUNT_HEADER))
    return 0


def tenant_list(args: argparse.Namespace, cfg: Config) -> int:
    items = _kube(_custom(cfg).list_cluster_custom_object, GROUP, VERSION, ACCOUNT_PLURAL)["items"]
    emit(args, items, lambda its: table([_account_row(b) for b in its], ACCOUNT_HEADER))
    return 0


def tenant_delete(args: argparse.Namespace, cfg: Config) -> int:
    custom = _custom(cfg)
    _kube(custom.delete_cluster_custom_object, GROUP, VERSION, ACCOUNT_PLURAL, args.name)
    if not args.no_wait:
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                custom.get_cluster_custom_object(GROUP, VERSION, ACCOUNT_PLURAL, args.name)
            except ApiException as exc:
                if exc.status == 404:
                    break
                raise
            if time.monotonic() > deadline:
                raise CommandError(
                    f"CreditAccount {args.name} still there after {args.timeout:.0f}s: the operator "
                    "removes it once Auth has unbound its namespaces (is the operator running?)"
                )
            time.sleep(0.5)
    print(
        f"CreditAccount {args.name} deleted: its namespaces may no longer charge it; "
        "the account and its ledger stay in Payment"
    )
    return 0


def _change_namespaces(args: argparse.Namespace, cfg: Config, add: bool) -> int:
    custom = _custom(cfg)
    for _ in range(5):  # optimistic concurrency: read, change, write with the version read
        body = _get_account(custom, args.account)
        namespaces = set((body.get("spec") or {}).get("namespaces") or [])
        namespaces = namespaces | {args.namespace} if add else namespaces - {args.namespace}
        body.setdefault("spec", {})["namespaces"] = sorted(namespaces)
        try:
            custom.replace_cluster_custom_object(GROUP, VERSION, ACCOUNT_PLURAL, args.account, body)
        except ApiException as exc:
            if exc.status == 409:
                continue
            raise _kube_error(exc) from exc
        break
    else:
        raise CommandError(f"CreditAccount {args.account} kept changing; try again")
    if not args.no_wait:
        body = _wait_ready(custom, args.account, args.timeout)
    emit(args, body, lambda b: table([_account_row(b)], ACCOUNT_HEADER))
    return 0


# -- money -------------------------------------------------------------------------------------
def top_up(args: argparse.Namespace, cfg: Config) -> int:
    key = args.idempotency_key or new_key()
    with _service(cfg, "payment") as payment:
        response = payment.request(
            "POST",
            f"/v1/accounts/{args.account}/top-ups",
            key=key,
            json={"amount": args.amount, "reason": args.reason},
        )
    done = answer(response, TopUp)
    replayed = response.headers.get("Idempotent-Replayed") == "true"

    def text(_: Any) -> str:
        account = done.account
        head = (
            f"already done: key {key} topped up {args.account} before (transaction {done.transaction}); "
            "no credits moved now"
            if replayed
            else f"topped up {args.account} by {args.amount} credits (transaction {done.transaction})"
        )
        return (
            f"{head}\navailable {account.available}, held {account.held}, "
            f"balance {account.balance}\n"
            f"idempotency key: {key} (rerun with --idempotency-key {key} if unsure it happened)"
        )

    emit(args, {**wire(done), "idempotencyKey": key, "replayed": replayed}, text)
    return 0


def balance(args: argparse.Namespace, cfg: Config) -> int:
    with _service(cfg, "payment") as payment:
        if args.account:
            items = [fetch(payment, Account, "GET", f"/v1/accounts/{args.account}")]
        else:
            items = fetch(payment, AccountList, "GET", "/v1/accounts").items
    rows = [[a.id, a.available, a.held, a.balance] for a in items]
    emit(args, [wire(a) for a in items], lambda _: table(rows, ["ACCOUNT", "AVAILABLE", "HELD", "BALANCE"]))
    return 0


def ledger(args: argparse.Namespace, cfg: Config) -> int:
    with _service(cfg, "payment") as payment:
        page = fetch(
            payment, LedgerPage, "GET", f"/v1/accounts/{args.account}/ledger", params={"limit": args.limit}
        )
    rows = [
        [e.at.isoformat()[:19], e.kind, e.book, f"{e.amount:+d}", e.job_id or "-", e.transaction]
        for e in page.items
    ]
    emit(args, wire(page), lambda _: table(rows, ["AT", "KIND", "BOOK", "AMOUNT", "JOB", "TRANSACTION"]))
    return 0


# -- users and tokens --------------------------------------------------------------------------
def user_create(args: argparse.Namespace, cfg: Config) -> int:
    with _service(cfg, "auth") as auth:
        user = fetch(
            auth, User, "POST", "/v1/users", key=new_key(), json={"id": args.user, "tenant": args.tenant}
        )
    emit(args, wire(user), lambda _: f"user {user.id} created in tenant {user.tenant}")
    return 0


def token_issue(args: argparse.Namespace, cfg: Config) -> int:
    subject = {"user": args.user} if args.user else {"service": args.service}
    # The file is opened before the token is issued: a folder we can't write to is said before a
    # token exists that nobody would ever see.
    with contextlib.ExitStack() as stack:
        secret = stack.enter_context(PrivateFile(Path(args.write))) if args.write else None
        with _service(cfg, "auth") as auth:
            issued = fetch(auth, IssuedToken, "POST", "/v1/tokens", key=new_key(), json=subject)
        if issued.token is None:  # a fresh key: only a replay answers without the secret
            raise CommandError(f"auth: token {issued.id} was issued, but its secret was not shown")
        if secret is not None:
            secret.commit(issued.token + "\n")
            issued = issued.model_copy(update={"token": f"(written to {secret.path})"})
    emit(
        args,
        wire(issued),
        lambda _: f"token {issued.id} for {issued.subject} (shown once; keep it secret):\n{issued.token}",
    )
    return 0


def token_revoke(args: argparse.Namespace, cfg: Config) -> int:
    with _service(cfg, "auth") as auth:
        token = fetch(auth, TokenInfo, "POST", f"/v1/tokens/{args.token_id}/revoke", key=new_key())
    emit(args, wire(token), lambda _: f"token {token.id} of {token.subject} revoked")
    return 0


# -- looking into a job ------------------------------------------------------------------------
def job_explain(args: argparse.Namespace, cfg: Config) -> int:
    namespace, _, name = args.job.partition("/")
    if not namespace or not name:
        raise CommandError("name the job as NAMESPACE/NAME")
    with _service(cfg, "main") as main:
        report = fetch(main, AdminJob, "GET", f"/v1/admin/jobs/{namespace}/{name}")
    emit(args, wire(report), lambda _: explain_text(report))
    return 0


def explain_text(report: AdminJob) -> str:
    job, svc = report.job, report.services
    log = job.saga_log
    lines = [
        f"job {job.namespace}/{job.name}  uid {job.uid}",
        f"  phase {job.phase or 'Pending'}; price {job.price}; {log.message or ''}".rstrip("; "),
        "saga log (the operator's record):",
    ]
    for step in log.steps:
        error = f" - {step.last_error}" if step.last_error else ""
        lines.append(f"  {step.name:<10} {step.state or '-':<10} attempts {step.attempts}{error}")
    for comp in log.compensations:
        lines.append(f"  undo {comp.name:<10} {comp.state or '-'}")
    charges = svc.payment
    holds = ", ".join(f"{h.id} {h.state} {h.amount}" for h in charges.holds) or "none"
    objects = ", ".join(f"{o.kind} {o.id} {o.state}" for o in svc.storage) or "no objects"
    lines += [
        "what each service holds:",
        f"  payment  charged {charges.charged}; holds: {holds}",
        f"  storage  {objects}",
        f"  ai       task {svc.ai.state if svc.ai is not None else 'none'}",
        f"  auth     namespace {'may' if svc.auth.bound else 'may NOT'} charge the account",
    ]
    audit = log.audit
    lines.append(f"auditor: {(audit.verdict if audit else None) or 'not audited yet'}")
    lines += [f"  - {note}" for note in (audit.findings if audit else [])]
    lines.append("disagreements now: " + ("none" if not report.disagreements else ""))
    lines += [
        f"  - {d.kind} at {d.service}: {d.detail}" + (f" (repair: {d.repair})" if d.repair else "")
        for d in report.disagreements
    ]
    return "\n".join(lines)


def _newest_first(api: Api, path: str, want: int | None, page_size: int = 1000) -> list[dict[str, Any]]:
    """Up to ``want`` entries (all of them for None) of a listing paged by ``before``/``next``."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    while want is None or len(items) < want:
        limit = page_size if want is None else min(page_size, want - len(items))
        page = api.json("GET", path, params={**params, "limit": limit})
        items += page["items"]
        if page.get("next") is None:
            break
        params["before"] = page["next"]
    return items


def audit(args: argparse.Namespace, cfg: Config) -> int:
    rows: list[list[Any]] = []
    items: list[dict[str, Any]] = []
    want = None if args.all else args.limit
    for name in args.service or ["payment", "auth"]:
        with _service(cfg, name) as svc:
            items += [{"service": name, **item} for item in _newest_first(svc, "/v1/admin/audit", want)]
    items.sort(key=lambda i: i["at"], reverse=True)
    for item in items:
        detail = {k: v for k, v in item["detail"].items() if k != "key"}
        rows.append(
            [
                item["at"][:19],
                item["service"],
                item["caller"],
                item["action"],
                item["target"],
                json.dumps(detail),
            ]
        )
    emit(args, items, lambda _: table(rows, ["AT", "SERVICE", "CALLER", "ACTION", "TARGET", "DETAIL"]))
    return 0


# -- the parser --------------------------------------------------------------------------------
def add_admin_parser(sub: Any) -> None:
    admin = sub.add_parser("admin", help="onboard tenants, move credits, look into jobs (platform admins)")
    admin.add_argument(
        "--config", help="configuration file (default: $AIJOBS_CONFIG, ~/.config/aijobs/config.toml)"
    )
    admin.add_argument("-o", "--output", choices=["text", "json"], default="text")
    what = admin.add_subparsers(dest="what", required=True)

    def waits(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-wait", action="store_true", help="do not wait for the operator")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")

    tenant = what.add_parser("tenant", help="tenants: CreditAccount objects").add_subparsers(
        dest="verb", required=True
    )
    p = tenant.add_parser("create", help="open a tenant's credit account, optionally with namespaces")
    p.add_argument("name")
    p.add_argument("--namespace", action="append", help="a namespace whose jobs may charge it (repeatable)")
    p.add_argument("--description")
    waits(p)
    p.set_defaults(run=tenant_create)
    p = tenant.add_parser("list", help="tenants with their balances and jobs in flight")
    p.set_defaults(run=tenant_list)
    p = tenant.add_parser("delete", help="stop a tenant's namespaces charging it (the ledger stays)")
    p.add_argument("name")
    waits(p)
    p.set_defaults(run=tenant_delete)

    for verb, add in (("bind", True), ("unbind", False)):
        p = what.add_parser(verb, help=f"{'let' if add else 'stop'} a namespace's jobs charge an account")
        p.add_argument("namespace")
        p.add_argument("--account", required=True)
        waits(p)
        p.set_defaults(run=lambda a, c, add=add: _change_namespaces(a, c, add))

    p = what.add_parser("top-up", help="add credits to an account (idempotent: a retry moves money once)")
    p.add_argument("account")
    p.add_argument("amount", type=int)
    p.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    p.add_argument("--idempotency-key", help="repeat an earlier top-up's key to make sure it happened once")
    p.set_defaults(run=top_up)
    p = what.add_parser("balance", help="an account's (or every account's) credits")
    p.add_argument("account", nargs="?")
    p.set_defaults(run=balance)
    p = what.add_parser("ledger", help="an account's movements, newest first")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=ledger)

    user = what.add_parser("user", help="users").add_subparsers(dest="verb", required=True)
    p = user.add_parser("create", help="a user in a tenant")
    p.add_argument("user")
    p.add_argument("--tenant", required=True)
    p.set_defaults(run=user_create)

    token = what.add_parser("token", help="API tokens").add_subparsers(dest="verb", required=True)
    p = token.add_parser("issue", help="a token for a user (shown once)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--service")
    p.add_argument("--write", metavar="FILE", help="write the token to FILE (mode 600) instead of showing it")
    p.set_defaults(run=token_issue)
    p = token.add_parser("revoke", help="revoke a token by its id")
    p.add_argument("token_id")
    p.set_defaults(run=token_revoke)

    job = what.add_parser("job", help="jobs").add_subparsers(dest="verb", required=True)
    p = job.add_parser(
        "explain", help="a job's saga log beside what every service holds, and the auditor's view"
    )
    p.add_argument("job", metavar="NAMESPACE/NAME")
    p.set_defaults(run=job_explain)

    p = what.add_parser("audit", help="what admins (and the operator, for CreditAccounts) did")
    p.add_argument("--service", action="append", choices=["payment", "auth"])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--limit", type=int, default=50, help="the newest N entries of each service")
    which.add_argument("--all", action="store_true", help="the whole trail, read page by page")
    p.set_defaults(run=audit)


def run_admin(args: argparse.Namespace, cfg: Config) -> int:
    return int(args.run(args, cfg))
