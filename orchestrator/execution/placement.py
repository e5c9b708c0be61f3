"""Where this driver runs, and whether the records it writes will be found afterwards.

A driver started by Ray's Jobs API (``ray job submit``, and so every KubeRay RayJob and
RayCronJob) runs in Ray's unpacked copy of the working directory, under Ray's temporary
folder, with the environment of the head's ``ray start`` plus the job's runtime-environment
``env_vars``: the submitting shell's environment never reaches it. A driver on a head made
by ``ray up`` (``ray submit``, ``ray attach``) writes to a disk that ``ray down`` deletes.
In each case the embedded default store, ``sqlite:///mlflow/mlflow.db`` under the working
directory, would record the study where nobody looks and where it does not last, so the
driver refuses to start without a tracking URI the cluster can keep (:func:`check_records`).

The same drivers run with whatever ``python`` the head's environment finds. When that is not
the project's Python, ``import mlflow`` can even pick up the project's ``mlflow/`` records
folder (a plain folder on the job's ``PYTHONPATH``) and fail far from the cause;
:func:`check_installation` says so first.

Nothing here imports ray or mlflow: it reads the environment and the file system only, so
it runs before either is imported.

Example:
    >>> placement = detect_placement({}, cwd=Path("/home/me/project"), home=Path("/nonexistent"))
    >>> placement.site
    <Site.LOCAL: 'local'>
    >>> check_records(placement, None) is None   # a person's machine: the embedded default is fine
    True
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import OrchestratorError

__all__ = [
    "InstallationError",
    "Placement",
    "RecordsPlacementError",
    "Site",
    "check_installation",
    "check_records",
    "detect_placement",
]

#: Set by Ray's job manager for a job's driver (runtime env and metadata as JSON).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: Written on the head node by the Ray cluster launcher (``ray up``); Ray Tune reads it too.
LAUNCHER_MARKER = "ray_bootstrap_config.yaml"
#: Set by the KubeRay operator in every Ray container it makes.
KUBERAY_ENV = ("KUBERAY_GEN_RAY_START_CMD", "RAY_USAGE_STATS_KUBERAY_IN_USE")
SERVER_EXAMPLE = "http://HOST:5000"


class RecordsPlacementError(OrchestratorError):
    """The records would land where they are lost or never looked at (a Ray job's temporary copy, a head's disk)."""


class InstallationError(OrchestratorError):
    """The Python running the driver lacks ray or mlflow (a folder of the same name shadows them)."""


class Site(Enum):
    """What started this driver."""

    LOCAL = "local"
    RAY_JOB = "Ray job"
    KUBERAY = "KubeRay"
    CLUSTER_HEAD = "cluster head"

    @property
    def on_a_cluster(self) -> bool:
        """Whether the embedded default store would be lost or out of the user's sight."""
        return self is not Site.LOCAL


@dataclass(frozen=True)
class Placement:
    """Where the driver runs.

    Attributes:
        site: what started it.
        job_id: the Jobs API submission id (``raysubmit_...``), when a Ray job.
        cluster: the KubeRay cluster's name, when in a KubeRay pod.
        kuberay_kind: the KubeRay resource that made the cluster (``RayJob``, ``RayCluster``).
        job_env_vars: names the job's runtime environment sets (``env_vars``).
        cwd: the working directory (a Ray job's is Ray's unpacked copy).
        ray_temp_dirs: Ray's temporary folders on this node: nothing kept there outlives Ray.
    """

    site: Site
    cwd: Path
    job_id: str | None = None
    cluster: str | None = None
    kuberay_kind: str | None = None
    job_env_vars: tuple[str, ...] = ()
    ray_temp_dirs: tuple[Path, ...] = field(default=())

    def describe(self) -> str:
        """One phrase: where the driver runs."""
        if self.site is Site.KUBERAY:
            what = f"a KubeRay {self.kuberay_kind or 'Ray'} pod" + (f" (cluster {self.cluster})" if self.cluster else "")
            return what + (f", Ray job {self.job_id}" if self.job_id else "")
        if self.site is Site.RAY_JOB:
            return f"a Ray job ({self.job_id})" if self.job_id else "a Ray job"
        if self.site is Site.CLUSTER_HEAD:
            return "the head node of a cluster started by `ray up` (ray submit, ray attach)"
        return "this machine"

    def in_ray_temp(self, path: Path) -> bool:
        """Whether ``path`` lies in one of Ray's temporary folders (or the job's unpacked copy)."""
        path = _resolved(path)
        return any(path == d or d in path.parents for d in self.ray_temp_dirs)


def detect_placement(environ: Mapping[str, str] | None = None, *, cwd: Path | None = None, home: Path | None = None) -> Placement:
    """Tell where this driver runs, from the environment and the file system alone.

    Args:
        environ: the environment (default ``os.environ``).
        cwd: the working directory (default the current one).
        home: the home folder (default ``Path.home()``), where ``ray up`` leaves its marker.

    Returns:
        The :class:`Placement`: a Ray job when Ray's job manager started this process
        (``RAY_JOB_CONFIG_JSON_ENV_VAR``, inherited by an entrypoint's subcommands), a
        KubeRay pod when the operator's variables are set, the head of a ``ray up`` cluster
        when its ``~/ray_bootstrap_config.yaml`` exists, else this machine.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    home = Path.home() if home is None else home
    job_id, job_env_vars = None, ()
    in_job = JOB_CONFIG_ENV in environ
    if in_job:
        try:
            config = json.loads(environ[JOB_CONFIG_ENV])
        except ValueError:
            config = {}
        job_id = (config.get("metadata") or {}).get("job_submission_id")
        job_env_vars = tuple(sorted(((config.get("runtime_env") or {}).get("env_vars") or {})))
    kuberay = any(environ.get(name) for name in KUBERAY_ENV)
    kind = None
    if kuberay:
        tags = dict(part.split("=", 1) for part in environ.get("RAY_USAGE_STATS_EXTRA_TAGS", "").split(";") if "=" in part)
        kind = tags.get("kuberay_crd")
        site = Site.KUBERAY
    elif in_job:
        site = Site.RAY_JOB
    elif (home / LAUNCHER_MARKER).exists():
        site = Site.CLUSTER_HEAD
    else:
        site = Site.LOCAL
    temp_dirs: list[Path] = []
    if site.on_a_cluster:
        temp_dirs.append(_resolved(Path(environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"))
        here = _resolved(cwd)
        for folder in (here, *here.parents):
            if folder.name.startswith("session_") and folder.parent != folder:
                temp_dirs.append(folder.parent)  # the head's --temp-dir: it holds session_* folders
                break
    return Placement(
        site=site, cwd=cwd, job_id=job_id, cluster=environ.get("RAY_CLUSTER_NAME"), kuberay_kind=kind,
        job_env_vars=job_env_vars, ray_temp_dirs=tuple(dict.fromkeys(temp_dirs)),
    )


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _file_path(uri: str) -> str | None:
    """The file a tracking URI names (SQLite, ``file:``, a bare path), else None (a server or database)."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):]
    if uri.startswith("file://"):
        return uri[len("file://"):] or "/"
    if uri.startswith("file:"):
        return uri[len("file:"):]
    if "://" not in uri:
        return uri
    return None


def _how_to_pass(placement: Placement) -> str:
    if placement.site is Site.KUBERAY:
        return (
            "Pass one: the RayJob's runtimeEnvYAML env_vars (`orchestrator schedule --tracking-uri "
            f"{SERVER_EXAMPLE}` writes it there), or --tracking-uri in the entrypoint; an MLflow server "
            "the cluster can reach, since pods and their disks are deleted after the job."
        )
    if placement.site is Site.CLUSTER_HEAD:
        return (
            "Pass one: --tracking-uri, or MLFLOW_TRACKING_URI in the head's environment; the cluster's own "
            "default: cluster.yaml runs an MLflow server on the head and sets MLFLOW_TRACKING_URI=http://127.0.0.1:5000 "
            "in ~/.bashrc (run `ray up cluster.yaml` again if it is missing). An absolute file path works only on a "
            "volume that outlives the node."
        )
    return (
        "Pass one in the job's runtime environment, which is the only environment a job's driver gets from the "
        "submitting side: ray job submit ... --runtime-env-json "
        f"'{{\"env_vars\": {{\"MLFLOW_TRACKING_URI\": \"{SERVER_EXAMPLE}\"}}}}' (the submitting shell's own "
        "MLFLOW_TRACKING_URI does not reach the job); or --tracking-uri in the entrypoint; or the cluster's own "
        "default: start the head with MLFLOW_TRACKING_URI set (cluster.yaml's head does, for its MLflow server). "
        "On a single-host cluster an absolute SQLite path outside Ray's temporary folders works too, e.g. "
        "sqlite:////home/me/project/mlflow/mlflow.db."
    )


def check_records(placement: Placement, tracking_uri: str | None, *, timeout: float = 5.0) -> str | None:
    """Refuse a store that would be lost or never found; describe an accepted one.

    Args:
        placement: where the driver runs (:func:`detect_placement`).
        tracking_uri: the tracking URI the user gave (``--tracking-uri``, else
            ``$MLFLOW_TRACKING_URI``), or None for the embedded default.
        timeout: seconds an MLflow server gets to answer ``/health``.

    Returns:
        None on a person's machine (any store, the embedded default included); otherwise a
        line to echo: where the driver runs and where its records go.

    Raises:
        RecordsPlacementError: on a cluster, no tracking URI, a relative file path, a file in
            Ray's temporary folders, or a server that does not answer from here; the message
            says how to pass one.
    """
    if not placement.site.on_a_cluster:
        return None
    where = f"this driver runs as {placement.describe()}"
    if not tracking_uri:
        given = ""
        if placement.site is not Site.CLUSTER_HEAD:
            given = f" (the job's runtime environment sets {', '.join(placement.job_env_vars) or 'no env_vars'})"
        raise RecordsPlacementError(
            f"no tracking URI: {where}, and the default store sqlite:///mlflow/mlflow.db would be written to "
            f"{_resolved(placement.cwd) / 'mlflow' / 'mlflow.db'}, "
            + ("Ray's temporary copy of the working directory, deleted when Ray restarts and never read by "
               "`orchestrator status`, `ui` or `analyze` on your side" if placement.site is not Site.CLUSTER_HEAD
               else "the head's disk, deleted by `ray down`")
            + f"{given}. Expected --tracking-uri or MLFLOW_TRACKING_URI naming a store that outlives the job. "
            + _how_to_pass(placement)
        )
    path = _file_path(tracking_uri)
    if path is not None:
        if not path.startswith("/"):
            raise RecordsPlacementError(
                f"tracking URI {tracking_uri}: {where}, and a relative path resolves against its working directory "
                f"{placement.cwd}, " + ("Ray's temporary copy of your project" if placement.in_ray_temp(placement.cwd) else "not a place you chose")
                + ". Expected an absolute path outside Ray's temporary folders or an MLflow server. " + _how_to_pass(placement)
            )
        if placement.in_ray_temp(Path(path)):
            folders = ", ".join(str(d) for d in placement.ray_temp_dirs)
            raise RecordsPlacementError(
                f"tracking URI {tracking_uri}: {where}, and {path} lies in Ray's temporary folders ({folders}), "
                "deleted when Ray restarts. Expected a path outside them or an MLflow server. " + _how_to_pass(placement)
            )
        lasts = {
            Site.CLUSTER_HEAD: "; `ray down` deletes this disk unless the path is on a persistent volume",
            Site.KUBERAY: "; the pod's disk goes with the pod unless the path is on a mounted persistent volume",
        }.get(placement.site, "")
        return f"{where}; records: {tracking_uri} (a file on {socket.gethostname()}, outside Ray's temporary folders{lasts})"
    if tracking_uri.startswith(("http://", "https://")):
        _check_answers(tracking_uri, placement, where, timeout)
        return f"{where}; records: MLflow server {tracking_uri}"
    return f"{where}; records: {tracking_uri}"


def _check_answers(uri: str, placement: Placement, where: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError:
        return  # it answers; the store check says more if it is unhealthy
    except (urllib.error.URLError, OSError) as exc:
        local = "127.0.0.1" in uri or "localhost" in uri
        raise RecordsPlacementError(
            f"tracking server {uri} does not answer {url} from here ({getattr(exc, 'reason', exc)}): {where}"
            + (", where 127.0.0.1 is the node the driver runs on (the head), not your machine" if local else "")
            + ". Expected an MLflow server reachable from the cluster. " + _how_to_pass(placement)
        ) from None


def check_installation(placement: Placement, names: Sequence[str] = ("ray", "mlflow")) -> None:
    """Check, without importing them, that ``names`` would import from installed packages.

    A folder of the same name without ``__init__.py`` (the project's ``mlflow/`` records
    folder, on a Ray job's ``PYTHONPATH``) is a namespace package to Python: it imports when
    the real package is missing, and fails later with ``No module named 'mlflow.tracking'``.

    Raises:
        InstallationError: naming what is missing, the Python that ran, and how to run the
            project's Python (on a cluster: start the head from the project's environment).
    """
    problems = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            problems.append(f"{name} is not installed")
        elif spec.origin in (None, "namespace"):
            folders = [str(p) for p in (spec.submodule_search_locations or [])]
            plain = f"the plain folder {folders[0]}" if len(folders) == 1 else f"the plain folders {', '.join(folders)}"
            problems.append(f"{name} is not installed; `import {name}` finds only {plain}"
                            + (" (the project's records folder, not the package)" if name == "mlflow" else ""))
    if not problems:
        return
    python = f"{sys.executable} (Python {sys.version.split()[0]})"
    if placement.site in (Site.RAY_JOB, Site.KUBERAY):
        fix = (
            "A Ray job's entrypoint runs with the environment the head was started with, so its `python` is the "
            "head's. Start the head from the project's environment: in the project folder, after `make install`, "
            "`. .venv/bin/activate && ray start --head` (calling .venv/bin/ray without activating leaves another "
            f"`python` first on PATH); or install the project into that Python: `{sys.executable} -m pip install -e .`."
        )
    elif placement.site is Site.CLUSTER_HEAD:
        fix = ("cluster.yaml's setup_commands install the project into the Python of Ray's image; run `ray up cluster.yaml` "
               f"again, or install it here: `{sys.executable} -m pip install -e ~/numerics-orchestrator`.")
    else:
        fix = ("Run the project's Python: after `make install`, `. .venv/bin/activate`, then `orchestrator run ...` or "
               f"`python studies/x.py`; or install the project into this Python: `{sys.executable} -m pip install -e .`.")
    raise InstallationError(f"the Python running this driver cannot record a study: {'; '.join(problems)}. Python: {python}. {fix}")
