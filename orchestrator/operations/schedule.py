"""Scheduled reruns: KubeRay RayCronJob / RayJob manifests and crontab lines.

Each scheduled run is a new execution of the same study (``orchestrator run --mode
rerun``), followed by ``orchestrator compare`` against the execution before it, so a
silent numerical change (a library or driver upgrade) fails the job and alerts.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from ..errors import OrchestratorError, did_you_mean

__all__ = ["FORMATS", "ScheduleError", "ScheduleSpec", "check_cron", "render"]

FORMATS = ("raycronjob", "rayjob", "crontab")
MODES = ("rerun", "resume")
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
    mode: str = "rerun"
    tracking_uri: str | None = None
    time_zone: str | None = None
    gpus_per_worker: int = 1
    max_workers: int = 4
    workdir: str = "/app"
    address: str = "http://127.0.0.1:8265"

    @property
    def run_command(self) -> list[str]:
        return ["orchestrator", "run", self.study_file, "--variant", self.variant, "--mode", self.mode]

    @property
    def compare_command(self) -> list[str]:
        return ["orchestrator", "compare", self.study_file, "--variant", self.variant, "--baseline", "previous", "--candidate", "latest"]

    @property
    def entrypoint(self) -> str:
        """The job's command: the same CLI a person uses; exit 1 when drift is found."""
        commands = [self.run_command]
        if self.mode == "rerun":
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
    env = {"MLFLOW_TRACKING_URI": spec.tracking_uri} if spec.tracking_uri else {}
    runtime_env = "working_dir: " + spec.workdir + "\n"
    if env:
        runtime_env += "env_vars:\n" + "".join(f"  {k}: {v!r}\n" for k, v in env.items())
    return {
        "entrypoint": spec.entrypoint,
        "runtimeEnvYAML": runtime_env,
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
    """A crontab entry around ``ray job submit`` for a cluster started with ``ray up cluster.yaml``.

    Run ``ray dashboard cluster.yaml`` (port-forwards the head's 8265) or point ``--address``
    at the head. Ray 2.6x needs ``RAY_AUTH_MODE=token`` for the Jobs API.
    """
    env = f"MLFLOW_TRACKING_URI={shlex.quote(spec.tracking_uri)} " if spec.tracking_uri else ""
    submit = (
        f"RAY_AUTH_MODE=token {env}ray job submit --address {spec.address} --working-dir . "
        f"-- sh -c {shlex.quote(spec.entrypoint)}"
    )
    log = f"mlflow/schedule-{spec.resource_name}.log"
    return f"{spec.cron} cd {shlex.quote(spec.workdir)} && {submit} >> {log} 2>&1"


def render(spec: ScheduleSpec, fmt: str) -> str:
    """The definition as text: YAML manifests (raycronjob, rayjob) or one crontab line."""
    import yaml

    if fmt not in FORMATS:
        raise ScheduleError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}. {did_you_mean(fmt, FORMATS)}")
    if spec.mode not in MODES:
        raise ScheduleError(f"--mode: expected one of {', '.join(MODES)}, found {spec.mode!r}")
    if fmt == "crontab":
        if spec.cron.startswith("@") and spec.cron not in ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"):
            raise ScheduleError(f"--cron {spec.cron!r} is not understood by cron")
        return crontab_line(spec) + "\n"
    if fmt == "raycronjob":
        return yaml.safe_dump(raycronjob(spec), sort_keys=False)
    return yaml.safe_dump_all(rayjob_with_cron_wrapper(spec), sort_keys=False)
