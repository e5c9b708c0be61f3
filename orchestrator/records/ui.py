"""The MLflow UI on a study store: start it, wait until it serves, say where, stop it.

``orchestrator ui`` runs the MLflow tracking server (UI and REST API) on the store, bound to
127.0.0.1, with one worker and without MLflow's job runner (neither is needed to read a
study, and each costs a Python process importing mlflow: four workers and the job runner
took minutes to answer on a busy 2-core machine, one worker about a tenth of that). The URL
is printed only once the UI answers.

The study's experiment opens on its runs table: MLflow 3's UI shows an experiment in its
"GenAI" or "Model training" view according to its ``workflowType`` URL parameter (else the
browser's last choice, "GenAI" at first), so the URL carries ``workflowType=machine_learning``;
the experiment's ``mlflow.experimentKind`` tag (set by the recorder) says the same to UIs
that read it.

Example:
    >>> server = UiServer(resolve_tracking_uri(None), port=0)           # doctest: +SKIP
    >>> server.start(); server.wait_ready(timeout=300)                  # doctest: +SKIP
    >>> print(server.url(server.experiment_id("screening_demo")))       # doctest: +SKIP
    >>> server.stop()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import OrchestratorError
from .store import _sqlite_path as sqlite_path

__all__ = ["UiError", "UiServer", "experiment_url"]

WORKFLOW_TRAINING = "machine_learning"
"""The UI's ``workflowType`` that shows an experiment's runs table (``genai`` shows traces)."""


class UiError(OrchestratorError):
    """The MLflow UI could not be started, or did not answer in time."""


def experiment_url(base: str, experiment_id: str | None) -> str:
    """The UI page of an experiment's runs table (the experiments list without an id)."""
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType={WORKFLOW_TRAINING}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType={WORKFLOW_TRAINING}"


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Asks 127.0.0.1 directly, whatever proxy the environment names."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class UiServer:
    """An MLflow UI server process on one store.

    Args:
        tracking_uri: the resolved tracking URI (SQLite, a database, or a server's URL
            whose store the UI shows as well).
        port: the port on 127.0.0.1; 0 picks a free one.
    """

    def __init__(self, tracking_uri: str, port: int = 5000):
        if port < 0 or port > 65535:
            raise UiError(f"--port: expected a port number from 0 to 65535 (0: any free port), found {port}.")
        self.tracking_uri = tracking_uri
        self.port = port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line."""
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.tracking_uri,
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        path = sqlite_path(self.tracking_uri)
        if path is not None:
            command += ["--default-artifact-root", (path.parent / "artifacts").resolve().as_uri()]
        return command

    def start(self) -> Path:
        """Start the server in its own process group; returns the path of its log.

        Raises:
            UiError: the port is taken, or the store is a SQLite file that does not exist.
        """
        path = sqlite_path(self.tracking_uri)
        if path is not None and not path.is_file():
            raise UiError(
                f"no MLflow store at {path}: expected the SQLite file a run writes. Run a study first "
                f"(orchestrator run STUDY) or pass the store it ran on with --tracking-uri / MLFLOW_TRACKING_URI."
            )
        if _port_taken(self.port):
            raise UiError(f"port {self.port} on 127.0.0.1 is in use: expected a free port. Pass --port N, or --port 0 for any free one.")
        handle, name = tempfile.mkstemp(prefix=f"orchestrator-ui-{self.port}-", suffix=".log")
        self.log_path = Path(name)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with os.fdopen(handle, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        return self.log_path

    def _log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = 300.0, poll: float = 0.25) -> float:
        """Wait until the UI's page answers; returns the seconds waited.

        Raises:
            UiError: the server exited, or did not answer within ``timeout`` seconds (with
                the end of its log).
        """
        if self.process is None:
            raise UiError("UiServer.start() must be called before wait_ready()")
        start = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise UiError(f"the MLflow UI exited with status {code} before it served {self.base}; its log ({self.log_path}) ends:\n"
                              f"{self._log_tail()}")
            try:
                with _LOCAL.open(self.base + "/health", timeout=5) as health:
                    health.read()
                with _LOCAL.open(self.base + "/", timeout=10) as page:
                    if page.status == 200 and b"<html" in page.read(4096).lower():
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - start > timeout:
                self.stop()
                raise UiError(f"the MLflow UI did not answer {self.base} within {timeout:.0f} s (a busy machine starts it slowly: "
                              f"raise --timeout). Its log ({self.log_path}) ends:\n{self._log_tail()}")
            time.sleep(poll)

    def experiment_id(self, name: str) -> str | None:
        """The id of the experiment named ``name``, asked of the running server (None: no such experiment).

        Asked over its REST API, so this process never imports mlflow (seconds of CPU that
        would compete with the server's own start).
        """
        query = urllib.parse.urlencode({"experiment_name": name})
        try:
            with _LOCAL.open(f"{self.base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as response:
                return str(json.load(response)["experiment"]["experiment_id"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise UiError(f"the MLflow UI at {self.base} answered HTTP {exc.code} when asked for experiment {name!r}; "
                          f"its log: {self.log_path}") from None

    def url(self, experiment_id: str | None = None) -> str:
        """The URL to open: the experiment's runs table, or the experiments list."""
        return experiment_url(self.base, experiment_id)

    def wait(self) -> int:
        """Wait for the server to exit; returns its status."""
        if self.process is None:
            return 0
        return self.process.wait()

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server and every process it started (its process group): SIGTERM, then SIGKILL."""
        process = self.process
        if process is None:
            return
        deadline = time.monotonic() + grace
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            while time.monotonic() < deadline:
                if process.poll() is not None and not _group_alive(process.pid):
                    return
                time.sleep(0.1)
            deadline = time.monotonic() + 5.0
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a process of the group belongs to someone else
        return True
    return True
