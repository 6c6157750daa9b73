"""Secrets the CLI writes (``aijobs admin token issue --write FILE``) are readable by their owner
only, whether the file is new or already there, and a failed write leaves the old file as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aijobs.console.config import ConfigError, PrivateFile


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["usual-umask", "permissive-umask"])
def test_a_new_token_file_is_readable_by_its_owner_only(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "token"
    old = os.umask(umask)
    try:
        with PrivateFile(path) as secret:
            secret.commit("aij_x_y\n")
    finally:
        os.umask(old)
    assert path.read_text() == "aij_x_y\n"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_an_existing_world_readable_file_is_replaced_by_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("an old token\n")
    path.chmod(0o644)
    with PrivateFile(path) as secret:
        secret.commit("aij_new_secret\n")
    assert path.read_text() == "aij_new_secret\n"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_a_write_that_fails_before_commit_leaves_the_old_file_and_no_stray_copy(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("an old token\n")
    with pytest.raises(RuntimeError), PrivateFile(path):
        raise RuntimeError("the token could not be issued")
    assert path.read_text() == "an old token\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_a_folder_that_does_not_exist_is_said_before_anything_is_issued(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="can't write beside"), PrivateFile(tmp_path / "nope" / "token"):
        pass
