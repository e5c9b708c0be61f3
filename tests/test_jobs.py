"""Jobs on a cluster: records land where the user will find them (issue #17).

One local Ray head for the module, started as the README says (from the project's
environment, token authentication on) with its own temp dir and free ports, and one MLflow
server started by cluster.yaml's own command (on a local SQLite store instead of its
PostgreSQL database). Four jobs go through the real Jobs API at once:

* the README's job-submit line: its runs are read back from the submitting side with the
  README's ``status`` and ``analyze`` lines;
* the same line without the tracking URI: refused before any trial, nothing written;
* the line ``orchestrator schedule --format crontab`` writes, run as cron would (a bare
  environment): it records into the SQLite file it names, run and compare both;
* a job whose Python lacks mlflow: refused with the Python that ran and how to start the
  head from the project's environment.

The head and the server are stopped by their own pids (never ``ray stop``: other Ray
instances on this machine are not ours).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, free_port, wait_for_health
from test_jobs_placement import python_without_mlflow
from orchestrator import load_study
from orchestrator.cli import main
from orchestrator.execution import run_study
from orchestrator.records import load_results

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
README = (REPO / "README.md").read_text()
STUDY = "studies/screening_demo.py"  # 8 synthetic trials: the README's studies take minutes
README_STUDY = "studies/reduction_order.py"


def readme_block(heading: str) -> list[str]:
    """The commands of the first bash block after ``heading`` (comments stripped)."""
    section = README.split(heading, 1)[1]
    code = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in code.splitlines() if line.strip() and not line.startswith("#")]


def activated_env(**extra: str) -> dict[str, str]:
    """A shell after ``. .venv/bin/activate``, with nothing of a Ray job or a tracking store in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env.update(extra)
    return env


def _tree_under(marker: str) -> list[int]:
    """Pids whose command line names ``marker`` (our head's temp dir), and all their descendants."""
    parents: dict[int, int] = {}
    roots = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry.name)] = ppid
        if marker in cmdline:
            roots.append(int(entry.name))
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found)


def _stop_head(temp_dir: str) -> None:
    """SIGTERM the head's processes, SIGKILL what is left after 3 s (polled: most exit at once)."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        pids = _tree_under(temp_dir)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return "zombie" if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" else "alive"
    except (OSError, IndexError):
        return "zombie"


def server_command(port: int, folder: Path) -> list[str]:
    """cluster.yaml's ``mlflow server`` command, on a local SQLite store, 127.0.0.1 and ``port``."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    line = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    words = shlex.split(line.split(">")[0])
    words = words[words.index("mlflow"):]
    values = {"--backend-store-uri": f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination": str(folder / "artifacts"),
              "--host": "127.0.0.1", "--port": str(port), "--workers": "1"}
    for i, word in enumerate(words):
        if word in values:
            words[i + 1] = values[word]
    return [sys.executable, "-m", *words]


@dataclass(frozen=True)
class Cluster:
    dashboard: str
    server: str
    temp_dir: Path
    server_proc: subprocess.Popen[bytes]
    server_log: Path

    def wait_for_server(self, timeout: float = 300) -> None:
        """Until the server answers /health; then it gets back the normal scheduling priority (where allowed)."""
        wait_for_health(self.server, self.server_proc, self.server_log, timeout)
        with contextlib.suppress(PermissionError):  # raising a priority back needs CAP_SYS_NICE; without it the server stays niced
            os.setpriority(os.PRIO_PGRP, self.server_proc.pid, 0)


def start_head(temp_dir: str, dashboard: int) -> subprocess.CompletedProcess[str]:
    """The README's ``ray start --head`` (from the activated environment), isolated: free ports, its own temp dir, 1 CPU."""
    start = next(c for c in readme_block("### One machine") if "ray start --head" in c).split("&&")[-1]
    command = shlex.split(start) + [
        "--num-cpus", "1", "--port", str(free_port()), "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()), "--ray-client-server-port", str(free_port()),
        "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()), "--disable-usage-stats",
        "--include-log-monitor", "false",  # one process fewer to start; `ray job submit` tails the job's log itself
    ]
    return subprocess.run(command, env=activated_env(RAY_AUTH_MODE="token"), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The README's local head and cluster.yaml's MLflow server, started together; both stopped by their pids at the end.

    Ray 2.60's raylet gives the head's dashboard agent 15 s to start; a 2-core machine busy
    with other work can miss that, so the head gets three tries (each a fresh temp dir), and
    the server, which starts meanwhile, runs at a lower priority until it answers (it would
    otherwise take the cores the head needs). Only the README's job needs the server: the
    ``jobs`` fixture waits for it before that one.
    """
    folder = tmp_path_factory.mktemp("server")
    port, dashboard = free_port(), free_port()
    temp_dirs: list[str] = []
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(server_command(port, folder), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=activated_env(),
                              preexec_fn=lambda: os.nice(10))
    try:
        for _attempt in range(3):
            temp_dirs.append(tempfile.mkdtemp(prefix="rayjobs", dir="/tmp"))
            started = start_head(temp_dirs[-1], dashboard)
            if started.returncode == 0:
                break
            _stop_head(temp_dirs[-1])
        assert started.returncode == 0, started.stdout + started.stderr
        yield Cluster(dashboard=f"http://127.0.0.1:{dashboard}", server=f"http://127.0.0.1:{port}", temp_dir=Path(temp_dirs[-1]),
                      server_proc=server, server_log=folder / "server.log")
    finally:
        for temp_dir in temp_dirs:
            _stop_head(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def readme_submit_line(cluster: Cluster) -> str:
    line = next(c for c in readme_block("## On a cluster") if "ray job submit" in c)
    return (line.replace("http://127.0.0.1:8265", cluster.dashboard).replace("http://127.0.0.1:5000", cluster.server)
            .replace(README_STUDY, STUDY))


@dataclass
class Job:
    command: str
    returncode: int
    output: str


@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory):
    """The four submissions, at once (their drivers need no CPU; their trials share the head's one).

    The two that are refused before any record go first; the crontab's store (a SQLite file)
    gets its first execution and its line while they run, then the cron job joins them, and
    the README's job once the MLflow server answers.
    """
    tmp = tmp_path_factory.mktemp("jobs")
    bare = python_without_mlflow(tmp / "bare")
    readme = readme_submit_line(cluster)
    no_uri = re.sub(r" --runtime-env-json '[^']*'", "", readme)
    assert no_uri != readme and "MLFLOW_TRACKING_URI" not in no_uri
    no_mlflow = readme.replace("-- python ", f"-- {bare} ")
    commands = {"no_uri": (no_uri, activated_env()), "no_mlflow": (no_mlflow, activated_env())}  # refused before any record

    def submit(name: str) -> subprocess.Popen[str]:
        command, env = commands[name]
        return subprocess.Popen(["sh", "-c", command], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    procs = {name: submit(name) for name in commands}
    cron_store = f"sqlite:///{tmp / 'cron' / 'mlflow.db'}"
    # a first execution in the crontab's store, so its `compare --baseline previous` has one
    run_study(load_study(REPO / STUDY, "smoke"), tracking_uri=cron_store, in_process=True, progress=False)
    readme_line = next(c for c in readme_block("### One machine") if "--format crontab" in c)
    words = [STUDY if w == "studies/adam_precision.py" else w for w in shlex.split(readme_line)]
    assert words[0] == "orchestrator"
    scheduled = CliRunner().invoke(main, [*words[1:], "--variant", "smoke", "--address", cluster.dashboard, "--tracking-uri", cron_store])
    assert scheduled.exit_code == 0, scheduled.output
    cron_line = scheduled.stdout.strip()
    fields = cron_line.split(" ", 5)
    # cron runs the line with sh and almost no environment
    commands["cron"] = (fields[5].replace("\\%", "%"), {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "SHELL": "/bin/sh"})
    procs["cron"] = submit("cron")
    cluster.wait_for_server()
    commands["readme"] = (readme, activated_env())
    procs["readme"] = submit("readme")
    results = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=400)
        results[name] = Job(commands[name][0], proc.returncode, output)
    log = REPO / fields[5].rsplit(">>", 1)[1].split()[0]
    results["cron"].output += log.read_text() if log.exists() else ""
    log.unlink(missing_ok=True)
    return {"results": results, "cron_line": cron_line, "cron_store": cron_store, "bare": bare}


def test_readme_job_line_records_every_trial_in_the_named_store(cluster, jobs):
    job = jobs["results"]["readme"]
    assert job.returncode == 0, job.output[-4000:]
    assert "this driver runs as a Ray job (raysubmit_" in job.output and f"records: MLflow server {cluster.server}" in job.output
    assert "8 finished" in job.output
    df, _ = load_results(load_study(REPO / STUDY, "smoke"), tracking_uri=cluster.server)
    assert len(df) == 8 and df.state.eq("FINISHED").all() and df["A"].dtype.kind == "i"
    # the README's lines from the submitting side see the same runs
    for line in readme_block("## On a cluster"):
        words = shlex.split(line)
        if words[0] == "orchestrator":
            args = [w.replace("http://127.0.0.1:5000", cluster.server).replace(README_STUDY, STUDY) for w in words[1:]]
            args += ["--bootstrap", "20"] if words[1] == "analyze" else []
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, f"{line}\n{result.output}"
            if words[1] == "status":
                assert re.search(r"total\s.*8 trials\s.*8\s", result.output), result.output


def test_the_same_line_without_a_tracking_uri_is_refused_and_writes_nothing(cluster, jobs):
    job = jobs["results"]["no_uri"]
    assert job.returncode != 0
    assert "error: no tracking URI: this driver runs as a Ray job (raysubmit_" in job.output
    assert "Ray's temporary copy of the working directory" in job.output
    assert "--runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\"" in job.output and "--tracking-uri" in job.output
    assert "start the head with MLFLOW_TRACKING_URI set" in job.output
    assert " finished (" not in job.output and "records: " not in job.output  # refused before any trial
    copies = list(cluster.temp_dir.glob("session_*/runtime_resources/working_dir_files/*"))
    assert copies, "the jobs' unpacked working directories"
    # the default store would be mlflow/mlflow.db there (the jobs share one unpacked copy of the project)
    assert not [c for c in copies if (c / "mlflow" / "mlflow.db").exists()], "no store in Ray's copies of the working directory"
    assert not [c for c in copies if (c / ".venv").exists() or (c / ".git").exists()], "uploads leave .venv/ and .git/ out (.rayignore)"


def test_a_job_whose_python_lacks_mlflow_names_it_and_how_to_start_the_head(jobs):
    job = jobs["results"]["no_mlflow"]
    assert job.returncode != 0
    assert "error: the Python running this driver cannot record a study: mlflow is not installed" in job.output
    assert f"Python: {jobs['bare']}" in job.output
    assert ". .venv/bin/activate && ray start --head" in job.output
    assert "No module named" not in job.output


def test_crontab_line_run_as_cron_would_records_into_the_named_store(jobs):
    job = jobs["results"]["cron"]
    line = jobs["cron_line"]
    assert line.startswith("0 3 * * * cd ") and f"{VENV_BIN / 'ray'} job submit" in line
    assert "--runtime-env-json" in line and jobs["cron_store"] in line
    assert job.returncode == 0, job.output[-4000:]
    assert f"records: {jobs['cron_store']} (a file on" in job.output  # a file store outside Ray's folders: accepted and echoed
    assert "no drift" in job.output
    executions = [e for e in json.loads(CliRunner().invoke(main, ["executions", STUDY, "--tracking-uri", jobs["cron_store"], "--format", "json"]).output)]
    assert [e["mode"] for e in executions] == ["resume", "rerun"]
    df, _ = load_results(load_study(REPO / STUDY, "smoke"), tracking_uri=jobs["cron_store"])
    assert len(df) == 8 and df.state.eq("FINISHED").all()
    # the README's compare line, on the same store, from this side
    line = next(c for c in readme_block("### One machine") if c.startswith("orchestrator compare"))
    args = [STUDY if w == "studies/adam_precision.py" else w for w in shlex.split(line)[1:]]
    result = CliRunner().invoke(main, [*args, "--variant", "smoke", "--tracking-uri", jobs["cron_store"]])
    assert result.exit_code == 0 and "no drift" in result.output, result.output


def test_every_readme_cluster_command_is_exercised_here_or_needs_a_cloud_account():
    needs_cloud = ("ray up cluster.yaml", "ray down cluster.yaml", "ray dashboard cluster.yaml")
    exercised = ("RAY_AUTH_MODE=token ray job submit", "orchestrator status", "orchestrator analyze")
    for line in readme_block("## On a cluster"):
        assert line.startswith(needs_cloud + exercised), line
    local = readme_block("### One machine")
    assert any("ray start --head" in c for c in local)  # the head of the fixture
    assert any("--format crontab" in c for c in local)
