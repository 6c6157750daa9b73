"""``aijobs submit`` and ``aijobs jobs …``: a user's jobs through Main API, with their token.

``aijobs submit DIR/`` is a batch: the folder's images uploaded into a set, one job over the
set, its progress followed, its results downloaded into a folder. Every part of it can be run
again after an interruption: the key (hence the set and the job) derives from the folder and its
files, images the set holds already are not sent again, results already downloaded with the
right sha256 are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mimetypes
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import httpx

from aijobs.api import imagelist
from aijobs.api.main import (
    BatchResultLine,
    BatchResults,
    BatchView,
    CancelledJob,
    ImageListView,
    JobPage,
    JobView,
    UploadedImage,
    UploadPage,
)
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


def _run_at(text: str) -> dict[str, Any]:
    """``--run-at`` as the request says it: RFC 3339 as ``runAt``, or a delay (+90s, +10m, +2h,
    +1d) as ``delaySeconds``, which Main API counts from when it first accepts the job. So the
    same command run again after a lost answer sends the same request and finds the same job,
    where a time worked out here would differ on each run, and make a second job."""
    if m := re.fullmatch(r"\+(\d+)([smhd])", text):
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
        return {"delaySeconds": int(m[1]) * unit}
    return {"runAt": text}  # Main API checks it (RFC 3339, in the future, within a hold's life)


def submit(args: argparse.Namespace, cfg: Config) -> int:
    if args.list:
        return submit_list(args, cfg)
    if Path(args.image).is_dir():
        return submit_folder(args, cfg)
    params = dict(args.param or [])
    form: dict[str, str] = {"pipeline": args.pipeline, "parameters": json.dumps(params, sort_keys=True)}
    if args.run_at:
        form.update({name: str(value) for name, value in _run_at(args.run_at).items()})
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
            help="write the delivered result to FILE (a batch's into the folder FILE); implies --wait",
        )

    p = sub.add_parser("submit", help="submit an image job, or a folder of images as a batch (idempotent)")
    common(p)
    p.add_argument(
        "image",
        help="an image file, an http(s) URL Storage fetches, a folder (a batch of its images), "
        "or with --list an image list file",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="IMAGE is a text file naming a batch's images, one per line: an object id of one of "
        "your images or an http(s) URL (# comments and blank lines skipped)",
    )
    p.add_argument("--pipeline", required=True, choices=PIPELINES)
    p.add_argument("--param", action="append", type=_param, metavar="NAME=VALUE", help="a pipeline parameter")
    p.add_argument(
        "--run-at",
        help="when: RFC 3339 (2026-12-01T09:00:00Z) or a delay (+10m, +2h) from the job's first "
        "acceptance (the same command again is the same job)",
    )
    p.add_argument(
        "--again", action="store_true", help="a new job even if this very order was submitted before"
    )
    p.add_argument(
        "--idempotency-key",
        "--key",
        help="your own key (the default is derived from the order, or the folder)",
    )
    p.add_argument(
        "--max-failed", type=int, metavar="N", help="a batch: past N failed images, cancel the rest"
    )
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


# -- a batch: aijobs submit DIR/ ---------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
RESULT_SUFFIXES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
AT_ONCE = 8  # uploads or downloads in flight
REPORT_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


@dataclass(frozen=True)
class Image:
    """A file of the folder, and its name in the set (Main API's characters: A-Z a-z 0-9 . _ -)."""

    path: Path
    name: str
    size: int


def set_member_name(filename: str) -> str:
    """``filename`` as a set may name it: other characters as ``_``, no leading dot, 120 at most
    (a long name keeps its suffix and a digest of the whole, so two long names stay apart)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    if name.startswith("."):
        name = "_" + name
    if len(name) > 120:
        suffix = Path(name).suffix[:10]
        name = f"{name[: 120 - 9 - len(suffix)]}-{hashlib.sha256(filename.encode()).hexdigest()[:8]}{suffix}"
    return name


def folder_images(folder: Path) -> list[Image]:
    """The folder's image files (by suffix), sorted by file name; two that a set would name
    alike are refused, as a set cannot hold both."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = [Image(p, set_member_name(p.name), p.stat().st_size) for p in found]
    seen: dict[str, Path] = {}
    for image in images:
        if image.name in seen:
            raise CommandError(
                f"{seen[image.name].name} and {image.path.name} would have the same name in a set"
            )
        seen[image.name] = image.path
    if not images:
        raise CommandError(f"{folder} has no image files ({', '.join(IMAGE_SUFFIXES)})")
    return images


def batch_key(folder: Path, images: list[Image], order: dict[str, Any]) -> str:
    """The same folder, the same files (names and sizes) and the same order: the same key, so
    running the command again finds the set and the job it made."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for image in images:
        digest.update(f"\0{image.name}\0{image.size}".encode())
    digest.update(json.dumps(order, sort_keys=True).encode())
    return f"batch-{digest.hexdigest()[:40]}"


def set_of(key: str) -> str:
    """The set a key uploads into: any key, in the characters a set's name takes."""
    return "s-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _set_contents(main: Api, set_name: str) -> dict[str, str]:
    """What the set holds already: name -> sha256."""
    held: dict[str, str] = {}
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000} | ({"after": after} if after else {})
        page = fetch(main, UploadPage, "GET", f"/v1/uploads/{set_name}", params=params)
        held |= {item.name: item.sha256 for item in page.items}
        if page.next is None:
            return held
        after = page.next


def upload_folder(main: Api, set_name: str, images: list[Image]) -> tuple[int, int]:
    """Each image the set does not hold yet, sent (PUT is idempotent by name: a 200 says it was
    there). Returns (sent, already there)."""
    held = _set_contents(main, set_name)

    def send(image: Image) -> bool:
        digest = _file_sha256(image.path)
        if held.get(image.name) == digest:
            return False
        if image.name in held:
            raise CommandError(
                f"{image.path} changed since it was uploaded into set {set_name}: give --key a new value"
            )
        response = main.request(
            "PUT", f"/v1/uploads/{set_name}/{image.name}", content=image.path.read_bytes()
        )
        answer(response, UploadedImage)
        return response.status_code == 201

    with ThreadPoolExecutor(AT_ONCE) as pool:
        sent = sum(pool.map(send, images))
    return sent, len(images) - sent


def progress_text(batch: BatchView | None, phase: str, rate: float | None) -> str:
    """``images 1200/5000 done (3 failed), 42.0/s``: a batch's counts as a person follows them."""
    if batch is None:
        return f"images not counted yet (phase {phase})"
    done = batch.succeeded + batch.failed + batch.cancelled
    failed = f" ({batch.failed} failed)" if batch.failed else ""
    cancelled = f" ({batch.cancelled} cancelled)" if batch.cancelled else ""
    speed = f", {rate:.1f}/s" if rate is not None else ""
    return f"images {done}/{batch.total} done{failed}{cancelled}{speed}"


def follow_batch(
    main: Api, job_id: str, timeout: float, out: TextIO, clock: Callable[[], float] = time.monotonic
) -> JobView:
    """Poll the batch until it ends: one line rewritten in place on a terminal, else a line
    every few seconds (a log stays readable)."""
    tty = out.isatty()
    start = clock()
    first: tuple[float, int] | None = None
    said_at = -REPORT_EVERY
    while True:
        job = fetch(main, JobView, "GET", f"/v1/jobs/{job_id}")
        now, batch = clock(), job.batch
        done = batch.succeeded + batch.failed + batch.cancelled if batch else 0
        if first is None and batch is not None:
            first = (now, done)
        rate = (done - first[1]) / (now - first[0]) if first and now > first[0] else None
        ended = job.phase in TERMINAL_PHASES or now - start > timeout
        line = progress_text(batch, job.phase, rate)
        if tty:
            print(f"\r{line}\033[K", end="\n" if ended else "", file=out, flush=True)
        elif ended or now - said_at >= REPORT_EVERY:
            print(line, file=out, flush=True)
            said_at = now
        if ended:
            return job
        time.sleep(1.0)  # polling interval, bounded by the deadline above


def batch_results(main: Api, job_id: str) -> list[BatchResultLine]:
    lines: list[BatchResultLine] = []
    after = -1
    while True:
        page = fetch(
            main, BatchResults, "GET", f"/v1/jobs/{job_id}/results", params={"after": after, "limit": 1000}
        )
        lines.extend(page.items)
        if page.next is None:
            return lines
        after = page.next


def _input_name(line: BatchResultLine) -> str:
    return (line.key or f"item-{line.item}").rsplit("/", 1)[-1]


def result_stems(lines: Iterable[BatchResultLine], images: list[Image]) -> dict[int, str]:
    """Each succeeded image's file name in OUTDIR without its suffix: its input's stem, or its
    input's whole name where two inputs share a stem (a.png and a.jpg)."""
    local = {image.name: image.path.name for image in images}
    return _stems({line.item: local.get(_input_name(line), _input_name(line)) for line in lines})


def list_names(lines: Iterable[BatchResultLine], entries: list[imagelist.Entry]) -> dict[int, str]:
    """Each image of a list's batch by the name its line gives it: a URL's last path segment, an
    object id's key (its name in its set), numbered where two lines give the same name."""
    names: dict[int, str] = {}
    for line in lines:
        entry = entries[line.item] if 0 <= line.item < len(entries) else None
        name = _input_name(line)
        if entry is not None and entry.url is not None:
            name = unquote(urlsplit(entry.url).path.rsplit("/", 1)[-1]) or f"item-{line.item}"
        names[line.item] = set_member_name(name)
    counts = Counter(names.values())
    return {item: name if counts[name] == 1 else f"{item:06d}-{name}" for item, name in names.items()}


def _stems(names: dict[int, str]) -> dict[int, str]:
    stems = [Path(name).stem for name in names.values()]
    return {
        item: Path(name).stem if stems.count(Path(name).stem) == 1 else name for item, name in names.items()
    }


def download_results(lines: list[BatchResultLine], stems: dict[int, str], folder: Path) -> tuple[int, int]:
    """Every succeeded result into ``folder``, checked against the manifest's sha256; one there
    already with that sha256 is kept. Returns (downloaded, kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [line for line in lines if line.state == "succeeded" and line.sha256]

    def fetch_one(http: httpx.Client, line: BatchResultLine) -> bool:
        stem = stems[line.item]
        for suffix in RESULT_SUFFIXES.values():
            there = folder / f"{stem}.{suffix}"
            if there.is_file() and _file_sha256(there) == line.sha256:
                return False
        if not line.url:
            raise CommandError(f"result of {_input_name(line)} has no download link (deleted from Storage?)")
        response = http.get(line.url)
        if response.status_code != 200:
            raise CommandError(f"the result link of {_input_name(line)} answered {response.status_code}")
        if hashlib.sha256(response.content).hexdigest() != line.sha256:
            raise CommandError(f"the result of {_input_name(line)} does not match its sha256; run again")
        suffix = RESULT_SUFFIXES.get(response.headers.get("content-type", ""), "png")
        target = folder / f"{stem}.{suffix}"
        partial = target.with_name(f".{target.name}.part")
        partial.write_bytes(response.content)
        os.replace(partial, target)  # whole or absent: an interrupted run never leaves half a file
        return True

    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(AT_ONCE) as pool:
        downloaded = sum(pool.map(lambda line: fetch_one(http, line), wanted))
    return downloaded, len(wanted) - downloaded


def batch_summary(
    job: JobView,
    lines: list[BatchResultLine] | None,
    images: list[Image],
    names: dict[int, str] | None = None,
) -> str:
    batch = job.batch or BatchView(total=len(images) if names is None else len(names))
    delivered = batch.succeeded if job.result_url else 0
    text = [
        f"batch job {job.id}: {job.phase}" + (f" - {job.message}" if job.message else ""),
        f"  delivered {delivered} of {batch.total} images; "
        f"{batch.failed} failed, {batch.cancelled} cancelled",
        f"  charged {job.price * delivered} credits ({job.price} an image delivered)",
    ]
    if lines is not None:
        named = names or {}
        failures = [
            (named.get(x.item, _input_name(x)), x.reason or x.state) for x in lines if x.state != "succeeded"
        ]
    else:
        failures = [(f.input.rsplit("/", 1)[-1], f.reason) for f in batch.failures]
    text += [f"  {name}: {reason}" for name, reason in failures]
    return "\n".join(text)


def submit_folder(args: argparse.Namespace, cfg: Config) -> int:
    folder = Path(args.image)
    images = folder_images(folder)
    body = _batch_body(args)
    # The job follows the folder and the order; the set the folder alone (or your key): another
    # pipeline, or --again, makes another job of the images sent once.
    key = args.idempotency_key or (new_key() if args.again else batch_key(folder, images, body))
    set_name = set_of(args.idempotency_key or batch_key(folder, images, {}))
    with _main(cfg) as main:
        sent, there = upload_folder(main, set_name, images)
        print(f"uploaded {sent} images into set {set_name} ({there} there already)", file=sys.stderr)
        job, lines = _run_batch(args, main, key, {"set": set_name, **body}, len(images))
    if job is None:
        return EXIT_DELIVERED
    if lines is not None and args.output_file:
        got, kept = download_results(lines, result_stems(lines, images), Path(args.output_file))
        print(f"results in {args.output_file}: {got} downloaded, {kept} there already", file=sys.stderr)
    emit(args, wire(job), lambda _: batch_summary(job, lines, images))
    return _batch_exit(job)


def submit_list(args: argparse.Namespace, cfg: Config) -> int:
    """``aijobs submit LIST.txt --list``: the list uploaded as an image list of yours (named from
    its content, so the same list is the same one), one batch over it, followed and downloaded
    as a folder's is. The list is checked here first, naming a bad line, before anything is sent."""
    path = Path(args.image)
    try:
        text = path.read_bytes().decode("utf-8")
        entries = imagelist.parse(text)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, imagelist.BadImageList) as exc:
        raise CommandError(f"{path}: {exc}") from exc
    body = _batch_body(args)
    name = set_of(hashlib.sha256(text.encode()).hexdigest())
    key = args.idempotency_key or (new_key() if args.again else f"list-{_digest(name, body)}")
    with _main(cfg) as main:
        response = main.request(
            "PUT", f"/v1/lists/{name}", content=text.encode(), headers={"Content-Type": imagelist.LIST_TYPE}
        )
        listed = answer(response, ImageListView)
        print(f"image list {name}: {listed.images} images ({listed.urls} URLs)", file=sys.stderr)
        job, lines = _run_batch(args, main, key, {"list": name, **body}, listed.images)
    if job is None:
        return EXIT_DELIVERED
    names = list_names(lines, entries) if lines is not None else None
    if lines is not None and names is not None and args.output_file:
        got, kept = download_results(lines, _stems(names), Path(args.output_file))
        print(f"results in {args.output_file}: {got} downloaded, {kept} there already", file=sys.stderr)
    emit(args, wire(job), lambda _: batch_summary(job, lines, [], names or {}))
    return _batch_exit(job)


def _batch_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"pipeline": args.pipeline, "parameters": dict(args.param or [])}
    if args.run_at:
        body.update(_run_at(args.run_at))
    if args.max_failed is not None:
        body["maxFailedImages"] = args.max_failed
    return body


def _digest(name: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(f"{name}\0{json.dumps(body, sort_keys=True)}".encode()).hexdigest()[:40]


def _run_batch(
    args: argparse.Namespace, main: Api, key: str, request: dict[str, Any], count: int
) -> tuple[JobView | None, list[BatchResultLine] | None]:
    """Submit the batch and, asked to wait, follow it to its end and read its results: (the job,
    its result lines once delivered); (None, None) when not asked to wait (the job is printed)."""
    response = main.request("POST", "/v1/batches", key=key, json=request)
    job = answer(response, JobView)
    if response.headers.get("Idempotent-Replayed") == "true":
        print(f"already submitted: this is batch job {job.id} (use --again for another job)", file=sys.stderr)
    else:
        print(f"submitted batch job {job.id} ({count} images, {job.price} credits each)", file=sys.stderr)
    if not (args.wait or args.output_file):
        emit(args, wire(job), lambda _: job.id)
        return None, None
    job = follow_batch(main, job.id, args.timeout, sys.stderr)
    return job, batch_results(main, job.id) if job.result_url else None


def _batch_exit(job: JobView) -> int:
    if job.phase not in TERMINAL_PHASES:
        print(f"job {job.id} has not ended yet; run the same command again to follow it", file=sys.stderr)
        return EXIT_STILL_RUNNING
    batch = job.batch
    every = job.phase == "Delivered" and batch is not None and batch.succeeded == batch.total
    return EXIT_DELIVERED if every else EXIT_FAILED
