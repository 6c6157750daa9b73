"""``aijobs submit DIR/ --wait -o OUTDIR/``: a folder of images submitted as one batch through
Main API (the real app, over HTTP, with Storage: :mod:`tests.services.batch_stand`), followed,
its results downloaded and checked, and the same command run again resuming where it stopped:
no image sent twice, no job made twice, no result downloaded twice."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aijobs.api.main import BatchResults, BatchView, JobView
from aijobs.cli import main as aijobs
from aijobs.console import user
from tests.services import images
from tests.services.batch_stand import Stand, stand

__all__ = ["stand"]


def _operator(stand: Stand, fail: frozenset[str]) -> threading.Thread:
    """The operator's part: once the batch exists, it delivers it."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while not stand.kube.jobs:
            assert time.monotonic() < deadline
            time.sleep(0.05)  # polling the in-memory API server, bounded by the deadline
        stand.deliver(next(iter(stand.kube.jobs)), fail=fail)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_is_submitted_as_a_batch_and_a_second_run_resumes_without_repeating_anything(
    stand: Stand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    (folder / "a.png").write_bytes(images.png(color=(1, 1, 1)))
    (folder / "b.png").write_bytes(images.png(color=(2, 2, 2)))
    (folder / "c d.jpg").write_bytes(images.jpeg())
    (folder / "notes.txt").write_text("not an image")
    token = tmp_path / "token"
    token.write_text(stand.tokens["acme"] + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[services]\nmain = "{stand.main_url}"\n[user]\ntoken_file = "{token}"\n')
    monkeypatch.setenv("AIJOBS_CONFIG", str(config))
    command = [
        "submit",
        str(folder),
        "--pipeline",
        "grayscale",
        "--max-failed",
        "2",
        "--wait",
        "-o",
        str(out),
    ]

    operator = _operator(stand, fail=frozenset({"b.png"}))
    assert aijobs(command) == 1  # an image failed
    operator.join()
    first = capsys.readouterr()
    assert "uploaded 3 images" in first.err
    assert "images 3/3 done (1 failed)" in first.err
    assert "delivered 2 of 3 images" in first.out and "charged 2 credits" in first.out
    assert "b.png: the pipeline failed: broken image" in first.out
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c d.png"]
    manifest = {line.key: line.sha256 for line in _results(stand)}
    assert _sha(out / "a.png") == manifest["acme/" + _set(stand) + "/a.png"]
    assert _sha(out / "c d.png") == manifest["acme/" + _set(stand) + "/c_d.jpg"]
    assert len(stand.puts) == 3 and stand.kube.created == 1

    # Interrupted: one result was never written. The same command again resumes.
    (out / "a.png").unlink()
    kept = (out / "c d.png").stat().st_mtime_ns
    assert aijobs(command) == 1
    second = capsys.readouterr()
    assert "uploaded 0 images" in second.err and "3 there already" in second.err
    assert "already submitted" in second.err
    assert "1 downloaded, 1 there already" in second.err
    assert len(stand.puts) == 3 and stand.kube.created == 1
    assert _sha(out / "a.png") == manifest["acme/" + _set(stand) + "/a.png"]
    assert (out / "c d.png").stat().st_mtime_ns == kept

    # Another pipeline over the same folder is another job of the images already sent.
    assert aijobs(["submit", str(folder), "--pipeline", "sharpen"]) == 0
    assert "uploaded 0 images" in capsys.readouterr().err
    assert len(stand.puts) == 3 and stand.kube.created == 2


def test_an_image_list_is_submitted_as_a_batch_named_by_its_lines_and_a_second_run_repeats_nothing(
    stand: Stand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text(stand.tokens["acme"] + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[services]\nmain = "{stand.main_url}"\n[user]\ntoken_file = "{token}"\n')
    monkeypatch.setenv("AIJOBS_CONFIG", str(config))
    with stand.user("acme") as acme:
        acme.put("/v1/uploads/album/kept.png", content=images.png(color=(3, 3, 3))).raise_for_status()
    with stand.storage() as storage:
        kept = storage.get("/v1/by-key/acme/album/kept.png").json()["id"]
    listing, out = tmp_path / "night.txt", tmp_path / "out"
    listing.write_text(
        f"# last night\n{kept}\nhttps://scans.example.com/a/0001.png\n"
        "https://scans.example.com/b/0001.png\nhttps://scans.example.com/broken.png\n"
    )
    command = ["submit", str(listing), "--list", "--pipeline", "grayscale", "-o", str(out)]

    operator = _operator(stand, fail=frozenset({"broken.png"}))
    assert aijobs(command) == 1  # an image failed
    operator.join()
    first = capsys.readouterr()
    assert "4 images (3 URLs)" in first.err and "images 4/4 done (1 failed)" in first.err
    assert "delivered 3 of 4 images" in first.out and "broken.png: the pipeline failed" in first.out
    # Named by their lines, in OUTDIR: two URLs with one file name are told apart by their item.
    assert sorted(p.name for p in out.iterdir()) == ["000001-0001.png", "000002-0001.png", "kept.png"]
    lines = {line.item: line for line in _results(stand)}
    assert _sha(out / "kept.png") == lines[0].sha256 and _sha(out / "000002-0001.png") == lines[2].sha256
    spec = next(iter(stand.kube.jobs.values()))["spec"]
    assert set(spec["input"]["batch"]) == {"imageList"}

    assert aijobs(command) == 1  # again: the same list, the same job, nothing downloaded twice
    second = capsys.readouterr()
    assert "already submitted" in second.err and "0 downloaded, 3 there already" in second.err
    assert stand.kube.created == 1

    listing.write_text(f"{kept}\nftp://scans.example.com/0002.png\n")
    assert aijobs(command) == user.EXIT_ERROR  # checked before anything is sent
    assert "line 2" in capsys.readouterr().err and stand.kube.created == 1


def _set(stand: Stand) -> str:
    job = next(iter(stand.kube.jobs.values()))
    return str(job["spec"]["input"]["batch"]["prefix"]).split("/")[1]


def _results(stand: Stand) -> list[Any]:
    name = next(iter(stand.kube.jobs))
    with stand.user("acme") as http:
        return BatchResults.model_validate(http.get(f"/v1/jobs/{name}/results").json()).items


@pytest.mark.parametrize(
    ("batch", "rate", "text"),
    [
        pytest.param(None, None, "images not counted yet (phase Pending)", id="not-counted"),
        pytest.param(
            {"total": 5000, "succeeded": 1197, "failed": 3},
            42.0,
            "images 1200/5000 done (3 failed), 42.0/s",
            id="running",
        ),
        pytest.param({"total": 2, "succeeded": 2}, None, "images 2/2 done", id="done-first-look"),
    ],
)
def test_progress_says_what_is_done_and_how_fast(
    batch: dict[str, int] | None, rate: float | None, text: str
) -> None:
    view = BatchView.model_validate(batch) if batch else None
    assert user.progress_text(view, "Pending", rate) == text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Main:
    """Main API answering a batch's views in turn."""

    def __init__(self, views: list[dict[str, Any]]) -> None:
        self.views = views

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.Response(
            200, json=self.views.pop(0), request=httpx.Request(method, f"http://main{path}")
        )


def test_on_a_terminal_progress_is_one_line_rewritten(monkeypatch: pytest.MonkeyPatch) -> None:
    base: dict[str, Any] = {
        "id": "j",
        "namespace": "n",
        "uid": "u",
        "createdAt": None,
        "pipeline": "grayscale",
        "parameters": {},
    }
    base |= {"price": 1, "runAt": None, "deadline": None, "message": None, "resultUrl": None}
    base |= {"conditions": [], "steps": [], "compensations": [], "audit": None}
    views = [
        base | {"phase": "Processing", "batch": {"total": 4, "succeeded": 0}},
        base | {"phase": "Processing", "batch": {"total": 4, "succeeded": 2}},
        base | {"phase": "Delivered", "batch": {"total": 4, "succeeded": 3, "failed": 1}},
    ]
    ticks = iter([0.0, 0.0, 1.0, 2.0])
    monkeypatch.setattr(time, "sleep", lambda _: None)
    screen = _Terminal()
    job = user.follow_batch(_Main(views), "j", 60, screen, clock=lambda: next(ticks))  # type: ignore[arg-type]
    assert isinstance(job, JobView) and job.phase == "Delivered"
    shown = screen.getvalue()
    assert shown.count("\n") == 1 and shown.endswith("\n")
    assert shown.split("\r")[1:] == [
        "images 0/4 done\x1b[K",
        "images 2/4 done, 2.0/s\x1b[K",
        "images 4/4 done (1 failed), 2.0/s\x1b[K\n",
    ]
