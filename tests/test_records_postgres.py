"""The ``postgres`` extra with the URI form the docs show (``postgresql://user@host:port/db``), on a real
PostgreSQL: a private cluster from Debian's binaries (``initdb`` in a temp folder, a free port), torn down after.

With SQLAlchemy 2.x a ``postgresql://`` URI loads the psycopg (3) driver, so the extra installs
``psycopg[binary]``; this test fails with "No module named 'psycopg'" if the extra installs anything else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import free_port
from orchestrator import load_study
from orchestrator.execution.runner import run_study
from orchestrator.records import Records

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None) if Path("/usr/lib/postgresql").is_dir() else None


def _sh(command: str) -> None:
    cmd = ["su", "postgres", "-c", command] if os.geteuid() == 0 else ["sh", "-c", command]
    subprocess.run(cmd, check=True, timeout=300)


@pytest.fixture
def postgres(tmp_path):
    if PG_BIN is None:
        pytest.skip("PostgreSQL binaries not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))  # not under tmp_path: user postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port = free_port()
    _sh(f"{PG_BIN}/initdb -D {folder}/data -A trust -U postgres > {folder}/initdb.log 2>&1")
    _sh(f"{PG_BIN}/pg_ctl -D {folder}/data -o '-p {port} -k {folder} -c listen_addresses=127.0.0.1' -l {folder}/log -w start > /dev/null")
    try:
        _sh(f"{PG_BIN}/createdb -h 127.0.0.1 -p {port} -U postgres mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        _sh(f"{PG_BIN}/pg_ctl -D {folder}/data -m fast stop > /dev/null")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_uri_as_documented_records_and_reads_back_a_study(postgres, write_study, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.chdir(tmp_path)  # a database store without a server keeps artifacts in ./mlruns
    study = load_study(str(write_study("on_postgres", {"A": [0, 1], "B": ["x", "y"]}, {"metric_points": 3})), "full")
    summary = run_study(study, tracking_uri=postgres, in_process=True, progress=False)
    assert summary.exit_code == 0 and summary.finished == 4 and summary.pending == 0, summary.line()
    records = Records.open(study, tracking_uri=postgres)
    table, meta = records.results()
    runs, _ = records.results(source="runs")
    assert meta["source"] == "table" and len(table) == 4 and sorted(table["A"]) == [0, 0, 1, 1]
    assert sorted(table["trial_id"]) == sorted(runs["trial_id"]) and set(runs["state"]) == {"FINISHED"}
