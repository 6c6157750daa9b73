"""The test bed itself: a real PostgreSQL that vanishes afterwards, and a control plane that
`aijobs controlplane up/down` starts for a user and cleans up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from aijobs_dev.testbed.postgres import PostgresCluster


def test_a_test_database_is_real_postgresql_and_starts_empty(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        assert (
            conn.execute(sa.text("select count(*) from pg_tables where schemaname = 'public'")).scalar() == 0
        )
        conn.execute(sa.text("create table credit (account text primary key, balance bigint not null)"))
        conn.execute(sa.text("insert into credit values ('acme', 100), ('beta', 7)"))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select account, balance from credit order by account")).all()
        assert [tuple(r) for r in rows] == [("acme", 100), ("beta", 7)]
        assert "PostgreSQL" in conn.execute(sa.text("select version()")).scalar_one()
    engine.dispose()


@pytest.mark.postgres
def test_a_cluster_is_gone_after_stop() -> None:
    cluster = PostgresCluster()
    cluster.start()
    with psycopg.connect(cluster.admin_dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    cluster.stop()
    assert cluster.wait_gone()
    assert not cluster.root.exists()


@pytest.mark.controlplane
def test_controlplane_up_prints_a_kubeconfig_that_kubectl_uses_and_down_removes_it(tmp_path: Path) -> None:
    folder = tmp_path / "cp"
    aijobs = [sys.executable, "-m", "aijobs.cli", "controlplane"]
    up = subprocess.run([*aijobs, "up", "--dir", str(folder)], capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        export = up.stdout.strip().splitlines()[-1]
        assert export.startswith("export KUBECONFIG=")
        kubeconfig = export.split("=", 1)[1]
        crds = subprocess.run(
            ["kubectl", f"--kubeconfig={kubeconfig}", "get", "crd", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "aiimagejobs.aijobs.io" in crds.stdout
    finally:
        down = subprocess.run(
            [*aijobs, "down", "--dir", str(folder)], capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0
    assert not folder.exists()
