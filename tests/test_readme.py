"""The README's commands work as written (the main job, everyday use, the scheduling lines)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(heading: str) -> list[str]:
    """The commands of the first bash block after ``heading`` (comments stripped)."""
    section = README.split(heading, 1)[1]
    code = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in code.splitlines() if line.strip() and not line.startswith("#")]


def test_the_two_commands_are_make_demo_and_make_test_and_ci_runs_the_second():
    assert block("## Two commands") == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_everyday_commands_run_as_written(ray_session, tracking_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    # the session's store: test_studies' smoke run of the same study then resumes these trials instead of running them again
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    commands = block("## Everyday use")
    assert commands[0] == ". .venv/bin/activate"
    for line in commands[1:]:
        words = shlex.split(line)
        if words[0] == "python":  # a study file as a script: its own process and its own embedded Ray
            env = {**os.environ, "RAY_AUTH_MODE": "token"}
            result = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
            assert result.returncode == 0, result.stderr[-2000:]
            continue
        assert words[0] == "orchestrator"
        args = words[1:] + (["--dry-run"] if words[1] == "ui" else [])
        if words[1] in ("analyze", "report") and "--csv" not in words:
            args += ["--bootstrap", "20"]
        if words[1] == "report":
            args += ["--out", str(tmp_path / "report")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        if words[1] == "ui":
            assert "http://127.0.0.1:5000" in result.output


def test_cluster_section_schedule_line_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    line = next(c for c in block("### One machine") if c.startswith("orchestrator schedule") and "raycronjob.yaml" in c)
    words = shlex.split(line.split(">")[0])
    result = CliRunner().invoke(main, words[1:])
    assert result.exit_code == 0, result.output
    assert "kind: RayCronJob" in result.output


def test_make_demo_runs_the_main_job(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_AUTH_MODE", None)  # as a user's shell: Ray's default authentication mode
    stamp = ROOT / ".venv" / ".installed"
    if not stamp.exists():  # installed by hand in a development checkout: nothing to reinstall
        stamp.touch()
    result = subprocess.run(["make", "-s", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Where the variance comes from" in result.stdout
    # the embedded default says nothing a user cannot act on (Ray's token-auth default warning)
    assert "Token authentication is enabled" not in result.stdout + result.stderr
    assert "orchestrator ui" in result.stdout and "reports/demo/report.html" in result.stdout
    assert (ROOT / "reports" / "demo" / "report.html").is_file()
    # the study source logged with the parent run must not become a .py file under mlflow/
    assert not list((ROOT / "mlflow").glob("**/*.py"))
