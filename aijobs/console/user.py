"""``aijobs submit`` and ``aijobs jobs …``: a user's jobs through Main API, with their token."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import mimetypes
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from aijobs.api.main import CancelledJob, JobPage, JobView
from aijobs.api.rules import TERMINAL_PHASES
from aijobs.api.v1alpha1 import PIPELINES
from aijobs.console.admin import answer, emit, fetch, table, wire
from aijobs.console.config import Config
from aijobs.console.http import Api, CommandError, new_key

__all__ = ["add_user_parsers"]

EXIT_DELIVERED, EXIT_FAILED, EXIT_ERROR, EXIT_STILL_RUNNING = 0, 1, 2, 3


def _main(cfg: Config) -> Api:
    return Api("main", cfg.url("main"), cfg.user_token())


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--param takes NAME=VALUE, not {text!r}")
    try:
        return name, json.loads(value)  # 2 -> 2, true -> True, "x" -> "x"
    except ValueError:
        return name, value


def _run_at(text: str) -> str:
    """RFC 3339, or a delay from now: +90s, +10m, +2h, +1d."""
    if m := re.fullmatch(r"\+(\d+)([smhd])", text):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        when = dt.datetime.now(dt.UTC) + dt.timedelta(**{unit: int(m[1])})
        return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return text  # Main API checks it (RFC 3339, in the future, within a hold's life) and says why not


def submit(args: argparse.Namespace, cfg: Config) -> int:
    params = dict(args.param or [])
    form: dict[str, str] = {"pipeline": args.pipeline, "parameters": json.dumps(params, sort_keys=True)}
    if args.run_at:
        form["runAt"] = _run_at(args.run_at)
    files = None
    digest = hashlib.sha256()
    if re.match(r"https?://", args.image):
        form["url"] = args.image
        digest.update(args.image.encode())
    else:
        path = Path(args.image)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        files = {
            "file": (path.name, content, mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        }
        digest.update(content)
    # The same order (image, pipeline, parameters, time) under the same token is the same job, so
    # running the command again after a lost answer finds the first job instead of paying twice.
    digest.update(json.dumps({k: v for k, v in form.items() if k != "url"}, sort_keys=True).encode())
    key = args.idempotency_key or (new_key() if args.again else f"submit-{digest.hexdigest()[:40]}")
    with _main(cfg) as main:
        response = main.request("POST", "/v1/jobs", key=key, data=form, files=files)
        job = answer(response, JobView)
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        if replayed:
            print(f"already submitted: this is job {job.id} (use --again for another job)", file=sys.stderr)
        else:
            print(f"submitted job {job.id} ({job.pipeline}, {job.price} credits)", file=sys.stderr)
        if not (args.wait or args.output_file):
            emit(args, wire(job), lambda _: job.id)
            return EXIT_DELIVERED
        job = _follow(main, job.id, args.timeout)
    return _finish(args, job)


def _follow(main: Api, job_id: str, timeout: float) -> JobView:
    """Poll the job until it ends, saying each change of phase and each retry as it happens."""
    deadline = time.monotonic() + timeout
    said: set[str] = set()
    while True:
        job = fetch(main, JobView, "GET", f"/v1/jobs/{job_id}")
        for line in progress_lines(job):
            if line not in said:
                said.add(line)
                print(f"  {line}", file=sys.stderr, flush=True)
        if job.phase in TERMINAL_PHASES or time.monotonic() > deadline:
            return job
        time.sleep(1.0)  # polling interval, bounded by the deadline above


def progress_lines(job: JobView) -> list[str]:
    """What a person waiting on a job wants to see: the phase, and a step that is retrying and why."""
    lines = [f"phase {job.phase}" + (f": {job.message}" if job.message else "")]
    for step in job.steps:
        if step.state == "Running" and step.last_error:
            lines.append(f"{step.name} retrying (attempt {step.attempts} failed: {step.last_error})")
    for comp in job.compensations:
        if comp.state == "Succeeded":
            lines.append(f"undone: {comp.name}")
    return lines


def _finish(args: argparse.Namespace, job: JobView) -> int:
    phase = job.phase
    if phase == "Delivered" and args.output_file and job.result_url:
        with httpx.Client(timeout=60) as http:
            response = http.get(job.result_url)
        if response.status_code != 200:
            raise CommandError(f"the result link answered {response.status_code}; link: {job.result_url}")
        Path(args.output_file).write_bytes(response.content)
        print(f"result written to {args.output_file} ({len(response.content)} bytes)", file=sys.stderr)
    emit(args, wire(job), lambda _: _job_text(job))
    if phase == "Delivered":
        return EXIT_DELIVERED
    if phase == "Failed":
        return EXIT_FAILED
    print(
        f"job {job.id} has not ended yet (phase {phase}); follow it with `aijobs jobs get {job.id}`",
        file=sys.stderr,
    )
    return EXIT_STILL_RUNNING


def _job_text(job: JobView) -> str:
    lines = [
        f"job {job.id}: {job.phase}" + (f" - {job.message}" if job.message else ""),
        f"  pipeline {job.pipeline} {json.dumps(job.parameters)}; price {job.price} credits",
        f"  run at {job.run_at or 'as soon as possible'}; deadline {job.deadline or '-'}",
    ]
    if job.result_url:
        lines.append(f"  result: {job.result_url}")
    for step in job.steps:
        error = f" ({step.last_error})" if step.last_error else ""
        lines.append(f"  step {step.name:<9} {step.state or '-':<10} attempts {step.attempts}{error}")
    return "\n".join(lines)


def jobs_list(args: argparse.Namespace, cfg: Config) -> int:
    with _main(cfg) as main:
        page = fetch(main, JobPage, "GET", "/v1/jobs", params={"limit": args.limit})
    rows = [[j.id, j.phase, j.pipeline, j.price, j.run_at or "-", j.created_at] for j in page.items]
    emit(args, wire(page), lambda _: table(rows, ["ID", "PHASE", "PIPELINE", "PRICE", "RUN-AT", "CREATED"]))
    return 0


def jobs_get(args: argparse.Namespace, cfg: Config) -> int:
    with _main(cfg) as main:
        if args.wait or args.output_file:
            job = _follow(main, args.job_id, args.timeout)
        else:
            job = fetch(main, JobView, "GET", f"/v1/jobs/{args.job_id}")
    if args.wait or args.output_file:
        return _finish(args, job)
    emit(args, wire(job), lambda _: _job_text(job))
    return 0


def jobs_cancel(args: argparse.Namespace, cfg: Config) -> int:
    with _main(cfg) as main:
        job = fetch(main, CancelledJob, "POST", f"/v1/jobs/{args.job_id}/cancel", key=new_key())
    outcome = {
        "already-ended": f"job {job.id} had already ended ({job.phase}): nothing to cancel",
        "requested": f"job {job.id} cancelled: what was done is being undone and held credits returned "
        "(a job whose charge had begun is delivered instead)",
    }[job.cancel]
    emit(args, wire(job), lambda _: outcome)
    return 0


def add_user_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", help="configuration file (default: $AIJOBS_CONFIG, ~/.config/aijobs/config.toml)"
        )
        p.add_argument(
            "--json", dest="output", action="store_const", const="json", default="text", help="print JSON"
        )

    def waiting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true", help="follow the job until it ends")
        p.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow it (default 3600)")
        p.add_argument(
            "-o",
            "--out",
            dest="output_file",
            metavar="FILE",
            help="write the delivered result to FILE (implies --wait)",
        )

    p = sub.add_parser("submit", help="submit an image job through Main API (idempotent)")
    common(p)
    p.add_argument("image", help="an image file, or an http(s) URL Storage fetches")
    p.add_argument("--pipeline", required=True, choices=PIPELINES)
    p.add_argument("--param", action="append", type=_param, metavar="NAME=VALUE", help="a pipeline parameter")
    p.add_argument("--run-at", help="when: RFC 3339 (2026-12-01T09:00:00Z) or a delay (+10m, +2h)")
    p.add_argument(
        "--again", action="store_true", help="a new job even if this very order was submitted before"
    )
    p.add_argument("--idempotency-key", help="your own key (the default is derived from the order)")
    waiting(p)
    p.set_defaults(run=submit)

    jobs = sub.add_parser("jobs", help="your jobs: list, get, cancel").add_subparsers(
        dest="verb", required=True
    )
    p = jobs.add_parser("list", help="your account's jobs, newest first")
    common(p)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=jobs_list)
    p = jobs.add_parser("get", help="one job, as its saga log tells it")
    common(p)
    p.add_argument("job_id")
    waiting(p)
    p.set_defaults(run=jobs_get)
    p = jobs.add_parser("cancel", help="cancel a job (credits held for it come back)")
    common(p)
    p.add_argument("job_id")
    p.set_defaults(run=jobs_cancel)
