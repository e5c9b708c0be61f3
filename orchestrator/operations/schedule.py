"""Scheduled reruns: KubeRay RayCronJob / RayJob manifests and crontab lines.

Each scheduled run is a new execution of the same study (``orchestrator run --mode
rerun``), followed by ``orchestrator compare`` against the execution before it, so a
silent numerical change (a library or driver upgrade) fails the job and alerts.

Every definition is a Ray job, and a Ray job's driver sees only the environment the head
was started with plus its runtime environment's ``env_vars``: the tracking URI travels
there (``runtimeEnvYAML`` in the manifests, ``--runtime-env-json`` in the crontab line),
never in the submitting shell's environment, which does not reach the job.

Example:
    >>> spec = ScheduleSpec("screening", "studies/screening.py", "0 3 * * *", tracking_uri="http://mlflow:5000")
    >>> spec.runtime_env()
    {'env_vars': {'MLFLOW_TRACKING_URI': 'http://mlflow:5000'}}
"""

from __future__ import annotations

import enum
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OrchestratorError, not_one_of
from ..records.recorder import Mode

if TYPE_CHECKING:
    from ..definition.study import Study

__all__ = ["FORMATS", "Format", "ScheduleError", "ScheduleSpec", "check_cron", "render", "spec_for"]


class Format(str, enum.Enum):
    """What ``orchestrator schedule`` writes."""

    RAYCRONJOB = "raycronjob"
    """A KubeRay RayCronJob (KubeRay >= 1.6)."""
    RAYJOB = "rayjob"
    """A RayJob in a ConfigMap, created on schedule by a Kubernetes CronJob."""
    CRONTAB = "crontab"
    """One crontab line around ``ray job submit``, for a head you started (``ray up``, ``ray start``)."""

    @property
    def on_kubernetes(self) -> bool:
        """Whether the job runs in pods that are deleted afterwards (with their disks)."""
        return self is not Format.CRONTAB

    @classmethod
    def parse(cls, value: "Format | str") -> "Format":
        try:
            return cls(value)
        except ValueError:
            names = [f.value for f in cls]
            raise ScheduleError(not_one_of("--format", value, names)) from None


FORMATS = tuple(f.value for f in Format)
MODES = tuple(m.value for m in Mode)
TRACKING_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_IMAGE = "numerics-orchestrator:0.1.0"
RAY_VERSION = "2.60.0"
_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}),
    ("day of week", 0, 7, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}),
)


class ScheduleError(OrchestratorError):
    """A schedule request that cannot be turned into a definition."""


def _file_path(uri: str) -> str | None:
    """The file a tracking URI names (SQLite, ``file:``, a bare path), else None (a server or database)."""
    for prefix in ("sqlite:///", "file://", "file:"):
        if uri.startswith(prefix):
            return uri[len(prefix):]
    return None if "://" in uri else uri


def _cron_value(text: str, low: int, high: int, names: dict[str, int]) -> int:
    value = names.get(text.lower()) if text.lower() in names else int(text) if text.isdigit() else None
    if value is None or not low <= value <= high:
        raise ValueError(text)
    return value


def check_cron(expr: str) -> str:
    """Validate a five-field cron expression (or a macro such as ``@daily``); return it normalised."""
    expr = " ".join(str(expr).split())
    if expr in _MACROS:
        return expr
    fields = expr.split(" ")
    example = "e.g. '0 3 * * *' (03:00 every day) or '@daily'"
    if len(fields) != 5:
        raise ScheduleError(f"--cron: expected five fields (minute hour day-of-month month day-of-week) or a macro ({', '.join(_MACROS)}), found {len(fields)} in {expr!r}; {example}")
    for text, (name, low, high, names) in zip(fields, _FIELDS):
        for part in text.split(","):
            base, _, step = part.partition("/")
            try:
                if step and (not step.isdigit() or int(step) < 1):
                    raise ValueError(step)
                if base != "*":
                    ends = base.split("-")
                    if len(ends) > 2:
                        raise ValueError(base)
                    values = [_cron_value(e, low, high, names) for e in ends]
                    if len(values) == 2 and values[0] > values[1]:
                        raise ValueError(base)
            except ValueError:
                raise ScheduleError(
                    f"--cron: the {name} field {text!r} is not valid: expected *, a number {low}-{high}, a range a-b, a list a,b or a step */n; {example}"
                ) from None
    return expr


@dataclass(frozen=True)
class ScheduleSpec:
    """What to schedule: the study file, variant, cron expression and where to run it."""

    study_name: str
    study_file: str
    cron: str
    variant: str = "full"
    image: str = DEFAULT_IMAGE
    mode: Mode = Mode.RERUN
    tracking_uri: str | None = None
    time_zone: str | None = None
    gpus_per_worker: int = 1
    max_workers: int = 4
    workdir: str = "/app"
    address: str = "http://127.0.0.1:8265"
    ray: str = "ray"

    def runtime_env(self, **extra: Any) -> dict[str, Any]:
        """The job's runtime environment: ``extra`` (e.g. ``working_dir``) and the tracking URI in ``env_vars``."""
        env = dict(extra)
        if self.tracking_uri:
            env["env_vars"] = {TRACKING_ENV: self.tracking_uri}
        return env

    @property
    def run_command(self) -> list[str]:
        return ["orchestrator", "run", self.study_file, "--variant", self.variant, "--mode", self.mode.value]

    @property
    def compare_command(self) -> list[str]:
        return ["orchestrator", "compare", self.study_file, "--variant", self.variant, "--baseline", "previous", "--candidate", "latest"]

    @property
    def entrypoint(self) -> str:
        """The job's command: the same CLI a person uses; exit 1 when drift is found."""
        commands = [self.run_command]
        if self.mode is Mode.RERUN:
            commands.append(self.compare_command)
        return " && ".join(shlex.join(c) for c in commands)

    @property
    def resource_name(self) -> str:
        name = re.sub(r"[^a-z0-9-]+", "-", f"{self.study_name}-{self.variant}".lower()).strip("-")
        return name[:50] or "study"


def _container(name: str, image: str, cpu: str, memory: str, gpus: int = 0, ports: bool = False) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory}},
    }
    if ports:
        container["ports"] = [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ]
    return container


def rayjob_spec(spec: ScheduleSpec) -> dict[str, Any]:
    """The ``spec`` of a KubeRay RayJob that runs the study on a fresh GPU Ray cluster."""
    import yaml

    return {
        "entrypoint": spec.entrypoint,
        "runtimeEnvYAML": yaml.safe_dump(spec.runtime_env(working_dir=spec.workdir), sort_keys=False),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 3600,
        "backoffLimit": 0,
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {
                "rayStartParams": {"num-gpus": "0"},
                "template": {"spec": {"containers": [_container("ray-head", spec.image, "2", "8Gi", ports=True)]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "gpu",
                    "replicas": 1,
                    "minReplicas": 0,
                    "maxReplicas": spec.max_workers,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [_container("ray-worker", spec.image, "8", "32Gi", gpus=spec.gpus_per_worker)]}},
                }
            ],
        },
    }


def _labels(spec: ScheduleSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "numerics-orchestrator", "orchestrator/study": spec.resource_name}


def raycronjob(spec: ScheduleSpec) -> dict[str, Any]:
    """A KubeRay ``RayCronJob`` (ray.io/v1; KubeRay >= 1.6, alpha there)."""
    body: dict[str, Any] = {"schedule": spec.cron, "jobTemplate": rayjob_spec(spec)}
    if spec.time_zone:
        body["timeZone"] = spec.time_zone
    return {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": spec.resource_name, "labels": _labels(spec)}, "spec": body}


def rayjob(spec: ScheduleSpec) -> dict[str, Any]:
    """A RayJob with ``generateName``, so each ``kubectl create`` makes a new execution."""
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"generateName": spec.resource_name + "-", "labels": _labels(spec)}, "spec": rayjob_spec(spec)}


def rayjob_with_cron_wrapper(spec: ScheduleSpec) -> list[dict[str, Any]]:
    """For clusters without RayCronJob: a RayJob template in a ConfigMap, and a Kubernetes
    CronJob (with the ServiceAccount and RBAC it needs) that creates it on schedule."""
    import yaml

    name = spec.resource_name
    account = f"{name}-submitter"
    cron_spec: dict[str, Any] = {
        "schedule": spec.cron,
        "concurrencyPolicy": "Forbid",
        "jobTemplate": {
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "serviceAccountName": account,
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "create-rayjob",
                                "image": "bitnami/kubectl:1.31",
                                "command": ["kubectl", "create", "-f", "/manifests/rayjob.yaml"],
                                "volumeMounts": [{"name": "manifests", "mountPath": "/manifests"}],
                            }
                        ],
                        "volumes": [{"name": "manifests", "configMap": {"name": f"{name}-rayjob"}}],
                    }
                },
            }
        },
    }
    if spec.time_zone:
        cron_spec["timeZone"] = spec.time_zone
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-rayjob", "labels": _labels(spec)},
            "data": {"rayjob.yaml": yaml.safe_dump(rayjob(spec), sort_keys=False)},
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": account},
            "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        },
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "labels": _labels(spec)}, "spec": cron_spec},
    ]


def crontab_line(spec: ScheduleSpec) -> str:
    """A crontab entry around ``ray job submit`` for a head you started (``ray up cluster.yaml``, ``ray start --head``).

    The tracking URI rides in ``--runtime-env-json`` (the job's ``env_vars``); ``ray`` is
    named by its full path (cron's ``PATH`` is bare); ``%``, a newline to cron, is escaped.
    Reach a ``ray up`` head with ``ray dashboard cluster.yaml`` (port-forwards its 8265) or
    point ``--address`` at it. Ray 2.6x needs ``RAY_AUTH_MODE=token`` for the Jobs API.
    """
    runtime = spec.runtime_env()
    options = f" --runtime-env-json {shlex.quote(json.dumps(runtime))}" if runtime else ""
    submit = (
        f"RAY_AUTH_MODE=token {shlex.quote(spec.ray)} job submit --address {shlex.quote(spec.address)} --working-dir .{options} "
        f"-- sh -c {shlex.quote(spec.entrypoint)}"
    )
    log = f"mlflow/schedule-{spec.resource_name}.log"
    line = f"{spec.cron} cd {shlex.quote(spec.workdir)} && {submit} >> {log} 2>&1"
    return line.replace("%", "\\%")


def spec_for(
    study: "Study",
    fmt: Format | str,
    *,
    cron: str,
    tracking_uri: str | None = None,
    mode: Mode | str = Mode.RERUN,
    image: str | None = None,
    time_zone: str | None = None,
    address: str = "http://127.0.0.1:8265",
    cwd: Path | None = None,
) -> ScheduleSpec:
    """What ``orchestrator schedule`` writes for ``study``, checked.

    A crontab line runs here (``cwd``, default the current folder) with this environment's
    ``ray``; its default store is ``mlflow/mlflow.db`` here, as an absolute path (the job's
    own working directory is Ray's temporary copy). A Kubernetes definition runs the
    image's ``/app`` and needs an MLflow server: pods and their disks are deleted afterwards.

    Raises:
        ScheduleError: a bad cron expression, or no tracking URI the job's records outlive.
    """
    fmt = Format.parse(fmt)
    cron = check_cron(cron)
    mode = Mode.parse(mode)
    source = Path(study.source_file) if study.source_file else None
    if fmt is Format.CRONTAB:
        cwd = (cwd or Path.cwd()).resolve()
        uri = tracking_uri or f"sqlite:///{cwd / 'mlflow' / 'mlflow.db'}"
        path = _file_path(uri)
        if path is not None and not path.startswith("/"):  # the user's folder, not the job's temporary copy
            uri = uri[: len(uri) - len(path)] + str((cwd / path).resolve())
        ray = Path(sys.executable).with_name("ray")
        return ScheduleSpec(
            study_name=study.name, study_file=os.path.relpath(source, cwd) if source else study.name, cron=cron,
            variant=study.variant or "full", mode=mode, tracking_uri=uri, time_zone=time_zone, workdir=str(cwd),
            address=address, ray=str(ray) if ray.exists() else "ray",
        )
    if not tracking_uri:
        raise ScheduleError(
            "--tracking-uri: a Kubernetes job runs in pods that are deleted afterwards, so its records need an MLflow server "
            f"the cluster can reach, found none (no --tracking-uri and no {TRACKING_ENV}). "
            "Pass e.g. --tracking-uri http://mlflow.mlflow.svc:5000"
        )
    if _file_path(tracking_uri) is not None:
        raise ScheduleError(
            f"--tracking-uri {tracking_uri}: a Kubernetes job runs in pods that are deleted afterwards, with their disks, so "
            "a file store there is lost; expected an MLflow server (or a database) the cluster can reach, e.g. "
            "--tracking-uri http://mlflow.mlflow.svc:5000"
        )
    return ScheduleSpec(
        study_name=study.name, study_file=f"studies/{source.name}" if source else study.name, cron=cron,
        variant=study.variant or "full", image=image or DEFAULT_IMAGE, mode=mode, tracking_uri=tracking_uri,
        time_zone=time_zone, workdir="/app", address=address,
    )


def render(spec: ScheduleSpec, fmt: Format | str) -> str:
    """The definition as text: YAML manifests (raycronjob, rayjob) or one crontab line."""
    import yaml

    fmt = Format.parse(fmt)
    if fmt is Format.CRONTAB:
        if spec.cron.startswith("@") and spec.cron not in ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"):
            raise ScheduleError(f"--cron {spec.cron!r} is not understood by cron")
        return crontab_line(spec) + "\n"
    if fmt is Format.RAYCRONJOB:
        return yaml.safe_dump(raycronjob(spec), sort_keys=False)
    return yaml.safe_dump_all(rayjob_with_cron_wrapper(spec), sort_keys=False)
