"""Session fixtures: one real local Ray per test session, a real temporary MLflow store.

Ray starts only for tests that ask for it (``ray_session``), once, with 2 CPUs, and is
shut down at the end. The executor reuses an initialised Ray and never shuts it down.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# Every `mlflow server` a test starts inherits these: no background job runner (seven huey
# consumers per server that the tests never use), and single-threaded BLAS, since the
# suite's Ray workers and servers already share the machine's few cores.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs, no dashboard).

    A start that times out (a loaded machine: "The current node timed out during startup")
    is tried once more before the tests that need Ray fail.
    """
    import ray

    started = False
    if not ray.is_initialized():
        for attempt in (1, 2):
            try:
                ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
                break
            except Exception as exc:  # Ray raises a bare Exception for a start-up timeout
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store shared by the session (tests use distinct study names)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder / 'mlflow.db'}"


def wait_for_health(url: str, proc: "subprocess.Popen[str] | subprocess.Popen[bytes]", log: Path, timeout: float = 300,
                    every: float = 0.5) -> None:
    """Until the server at ``url`` answers ``/health``; fails with the end of its ``log`` if it exits or the time runs out."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server at {url} did not start: {log.read_text()[-2000:]}") from None
            time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STUDY_TEMPLATE = '''
from orchestrator import Factor, Study, Variant

study = Study(
    name={name!r},
    workload="synthetic",
    factors=[{factors}],
    params={params!r},
    metrics={{"response": "minimize"}},
    replicates={replicates},
    retries={retries},
    seed=11,
    variants={{"smoke": Variant(replicates=1), "full": Variant()}},
)

if __name__ == "__main__":
    from orchestrator.cli import study_script_main

    study_script_main(study)
'''


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a synthetic study file: ``write_study(name, factors={"A": [0, 1]}, params={...}, replicates=1)``."""

    def write(name: str, factors: dict | None = None, params: dict | None = None, replicates: int = 1, retries: int = 0, folder: Path | None = None) -> Path:
        factors = factors or {"A": [0, 1]}
        text = ", ".join(f"Factor({k!r}, {v!r})" for k, v in factors.items())
        path = (folder or tmp_path) / f"{name}.py"
        path.write_text(textwrap.dedent(STUDY_TEMPLATE.format(name=name, factors=text, params=params or {}, replicates=replicates, retries=retries)))
        return path

    return write


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for driver subprocesses: the repo importable, token auth for joining the session Ray."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RAY_AUTH_MODE"] = "token"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
