"""The Ray bridge: the only module that imports ray (lazily, inside functions), except
:mod:`.data_parallel`, the only one that imports ``ray.train`` (data-parallel trials).

Trials run as Ray core tasks, one task per trial attempt, with the study's per-trial
resources (``num_cpus``, ``num_gpus`` incl. fractions, ``memory``, custom resources).
Per-step metrics of long trials reach the driver through one small actor
(:class:`_MetricRelay`, zero CPUs) that workers push batches to about once a second;
short trials return their whole curve with their result, so they pay no actor call.
Why core tasks and not Ray Tune: see ``docs/execution.md`` (measured).

A trial that asks for GPU memory (``Resources.gpu_memory_gb``) reserves it per GPU as the
custom resource ``gpu_memory_gb`` that nodes advertise (:mod:`.node`), and checks at its
start that its GPUs really have that much free
(:func:`~orchestrator.execution.worker.gpu_memory_shortfall`); if not, the attempt comes
back as a :attr:`~orchestrator.execution.executor.Loss.GPU_MEMORY` loss without running
and its retry avoids the nodes that refused it while another node could take it.

Faults (see ``docs/execution.md``, Faults): the relay is pinned to the driver's node (node
affinity), restarted by Ray if its process dies and recreated here if it is gone for good;
every trial returns its whole curve, so live batches a dead relay swallowed are not lost.
An attempt lost with its node (``NodeDiedError``) or its worker (``WorkerCrashedError``) is
an :class:`~orchestrator.execution.executor.Outcome` with a
:class:`~orchestrator.execution.executor.Loss`, never an exception in the driver; a Ray
call of the driver that fails for any other reason becomes a
:class:`~orchestrator.execution.executor.ClusterError` (one line).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

from ..design.trial import Resources, Trial, TrialResult
from ..errors import OrchestratorError
from .executor import ClusterError, Executor, Loss, Outcome
from .node import GPU_MEMORY, custom_resources
from .worker import Batch

__all__ = ["RayAddressError", "RayConnection", "RayExecutor", "RayRunner", "connect", "custom_resources", "slots_for", "wanted"]


class RayAddressError(OrchestratorError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be joined."""


@dataclass
class RayConnection:
    """A connection to Ray, and whether we started it (then we also shut it down).

    ``node``: the embedded node this connection started itself (see :func:`_start_embedded`),
    whose processes :meth:`close` stops; ``None`` for a cluster joined or a plain ``ray.init``.
    """

    address: str | None
    started: bool
    node: Any = None

    def close(self) -> None:
        """Shut Ray down if this connection started it; leave a Ray someone else started alone."""
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        if self.node is not None:
            node, self.node = self.node, None
            node.kill_all_processes(check_alive=False, allow_graceful=True)


def _start_embedded(num_cpus: int | None) -> Any:
    """Start the embedded Ray node: what ``ray.init(address="local")`` starts, less two costs.

    * No API server (Ray's dashboard head process). Without the dashboard it would only host
      usage statistics, which an embedded run turns off, yet ``ray.init`` waits for it to come
      up before it starts the raylet: 1.5-2 s of every start on 2 cores (bench/RESULTS.md,
      Plans and start-up).
    * The node's dashboard agent listens on a port the system picks (port 0, which Ray's agent
      supports) instead of Ray's fixed 52365: with a second Ray on the machine (another study,
      a test session) the agent otherwise retries that port for 3.4 s before the raylet can
      register.

    The node is started through Ray's own ``Node`` class (``ray._private``, the pinned Ray
    2.60): returns ``None`` where that interface is not what this code expects, and the
    caller then starts Ray with a plain ``ray.init``.
    """
    try:
        from ray._common.usage import usage_lib
        from ray._private import node as ray_node
        from ray._private import parameter
        from ray._private.authentication.authentication_token_setup import enable_token_auth_by_default, ensure_token_if_auth_enabled

        class _Node(ray_node.Node):  # type: ignore[misc]
            def start_api_server(self, *args: Any, **kwargs: Any) -> None:  # any signature: Ray's may grow arguments
                """Not started (see :func:`_start_embedded`)."""

        params = parameter.RayParams(num_cpus=num_cpus, include_dashboard=False, dashboard_agent_listen_port=0)
    except (ImportError, AttributeError, TypeError):
        return None
    enable_token_auth_by_default()  # as ray.init does for a new local cluster (RAY_AUTH_MODE, when set, wins)
    ensure_token_if_auth_enabled({}, create_token_if_missing=True)
    usage_lib.set_usage_stats_enabled_via_env_var(False)
    return _Node(ray_params=params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when ``host:port`` does not answer (ray.init retries for long)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise RayAddressError(f"Ray address {address!r}: expected 'auto', 'host:port' or 'ray://host:port', found a port that is not a number")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise RayAddressError(
            f"Ray cluster at {address} is unreachable ({exc.strerror or exc}): expected a Ray head's GCS port there. "
            "Start one (ray start --head --port 6379), pass the right --address, or leave --address out to start an embedded Ray."
        ) from None


def connect(address: str | None = None, *, num_cpus: int | None = None) -> RayConnection:
    """Join or start Ray.

    Args:
        address: ``None`` (use ``$RAY_ADDRESS`` if set, else start an embedded Ray sized to
            this machine), ``"auto"`` (the cluster this node belongs to), ``host:port`` or
            ``ray://host:port``.
        num_cpus: CPUs of an embedded Ray (default: all of this machine's).

    An already-initialised Ray (e.g. a test session's) is used as it is and never shut down.

    Raises:
        RayAddressError: the address cannot be joined.
    """
    import ray

    if ray.is_initialized():
        return RayConnection(address=None, started=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayAddressError(
                f"cannot join the Ray cluster at {address!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
                "Expected a running cluster (ray start --head, or ray up cluster.yaml); "
                "leave --address out to start an embedded Ray. Against a head with token authentication, set RAY_AUTH_MODE=token."
            ) from None
        return RayConnection(address=address, started=True)
    # The embedded Ray keeps Ray's default (token authentication on, on 127.0.0.1); Ray's
    # warning about that default gives the user nothing to act on, so it is not shown.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    node = _start_embedded(num_cpus)
    if node is None:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)  # never a stray local cluster
        return RayConnection(address=None, started=True)
    connection = RayConnection(address=None, started=True, node=node)
    atexit.register(connection.close)  # an exception or exit before close(): the node's processes go with the driver
    try:
        ray.init(address=node.address, **quiet)
    except BaseException:
        connection.close()
        raise
    return connection


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def wanted(resources: Resources) -> dict[str, float]:
    """Everything one trial reserves on a node, by Ray's resource names (zero amounts left out)."""
    amounts = {"CPU": resources.cpus, "GPU": resources.gpus, **custom_resources(resources)}
    return {name: amount for name, amount in amounts.items() if amount > 0}


def slots_for(resources: Resources, available: Mapping[str, float] | None = None) -> int:
    """How many trials with ``resources`` fit in the cluster at once (at least 1)."""
    available = dict(available if available is not None else cluster_resources())
    limits = []
    if resources.cpus > 0:
        limits.append(available.get("CPU", 0.0) / resources.cpus)
    if resources.gpus > 0:
        limits.append(available.get("GPU", 0.0) / resources.gpus)
    for name, amount in custom_resources(resources).items():
        if amount > 0:
            limits.append(available.get(name, 0.0) / amount)
    return max(1, int(min(limits))) if limits else max(1, int(available.get("CPU", 1.0)))


class _MetricRelay:
    """Driver-side mailbox for live metric batches (a Ray actor with zero CPUs, on the driver's node)."""

    def __init__(self) -> None:
        self._items: list[tuple[str, int, Batch]] = []

    def push(self, trial_id: str, attempt: int, batch: Batch) -> None:
        self._items.append((trial_id, attempt, batch))

    def drain(self) -> list[tuple[str, int, Batch]]:
        items, self._items = self._items, []
        return items


def _run_trial(trial: Mapping[str, Any], attempt: int, relay: Any, flush_s: float, resources: Resources | None = None) -> dict[str, Any]:
    """The Ray task: run one trial attempt on the device Ray assigned; never raises for the trial.
    A data-parallel trial (``world_size`` > 1) is handed to :mod:`.data_parallel` (Ray Train).

    The whole curve comes back with the result (the driver drops what already arrived
    live), so a batch the relay lost with its process is still recorded.
    """
    import ray

    from ..records.environment import fingerprint
    from .data_parallel import dispatch, is_data_parallel
    from .worker import BatchingSink, execute_trial, gpu_memory_shortfall

    if is_data_parallel(trial):
        return dispatch(trial, attempt, resources or Resources())

    pushed: Batch = []

    def push(trial_id: str, batch: Batch) -> None:
        pushed.extend(batch)
        relay.push.remote(trial_id, attempt, batch)

    node = ray.get_runtime_context().get_node_id()
    if resources is not None and resources.gpu_memory_gb:
        short = gpu_memory_shortfall(resources.gpu_memory_gb)
        if short is not None:  # the trial does not start: the driver retries it where the memory is free
            return {"loss": Loss.GPU_MEMORY.value, "detail": f"{short} on node {node[:12]}", "node": node}
    device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES: cuda:0 is ours
    sink = BatchingSink(push, interval_s=flush_s)
    result = execute_trial(dict(trial), sink=sink, device=device, attempt=attempt)
    return {
        "result": result.to_dict(), "curve": pushed + sink.remaining(), "started_ms": sink.started_ms, "last_step": sink.last_step,
        "pid": os.getpid(), "node": node, "environment": fingerprint(),
    }


_NODE_ID = re.compile(r"node ID: ([0-9a-f]{16,})", re.IGNORECASE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def classify(exc: BaseException) -> tuple[Loss, str | None]:
    """Why a task came back with ``exc`` instead of a result, and the node it was lost with (if Ray says)."""
    import ray

    errors = ray.exceptions
    if isinstance(exc, errors.TaskCancelledError):
        return Loss.CANCELLED, None
    if isinstance(exc, (errors.NodeDiedError, errors.LocalRayletDiedError)):
        match = _NODE_ID.search(str(exc))
        return Loss.NODE_LOST, match.group(1) if match else None
    if isinstance(exc, (errors.ObjectLostError, errors.RayActorError)) and "node" in str(exc).lower() and "dead" in str(exc).lower():
        return Loss.NODE_LOST, None
    return Loss.WORKER_DIED, None


class RayRunner:
    """Submits trial attempts as Ray tasks and collects what comes back (used by the Ray executor).

    Every Ray call the driver makes goes through here: a lost task is a
    :class:`~orchestrator.execution.executor.Loss`; a failing call of the driver itself is
    a :class:`~orchestrator.execution.executor.ClusterError`.
    """

    def __init__(self, flush_s: float = 1.0):
        import ray

        self._ray = ray
        self._task = ray.remote(_run_trial)
        self._flush_s = flush_s
        self._drain_ref: Any = None
        self._last_drain = 0.0
        self.relays_created = 0
        self._relay = self._new_relay()

    def _new_relay(self) -> Any:
        """The relay actor, on the driver's own node: it lives as long as the driver does.

        Ray restarts it there if its process dies (``max_restarts=-1``) and replays the
        pushes it missed meanwhile (``max_task_retries=-1``).
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = self._ray.get_runtime_context().get_node_id()
        self.relays_created += 1
        return (
            self._ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_MetricRelay)
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False))
            .remote()
        )

    def submit(self, trial: Mapping[str, Any], attempt: int, resources: Resources, avoid: frozenset[str] = frozenset()) -> Any:
        """Start one attempt as a Ray task; ``avoid``: nodes it must not run on (ids)."""
        from .data_parallel import dispatch_options

        options: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "max_retries": 0, "name": f"trial-{trial['trial_id'][:12]}"}
        if resources.memory_mb:
            options["memory"] = int(resources.memory_mb) * 1024 * 1024
        custom = custom_resources(resources)
        if custom:
            options["resources"] = custom
        if avoid:
            options["label_selector"] = {"ray.io/node-id": f"!in({', '.join(sorted(avoid))})"}
        options = dispatch_options(trial, options)  # a data-parallel trial's task holds nothing: its workers do
        try:
            return self._task.options(**options).remote(dict(trial), attempt, self._relay, self._flush_s, resources)
        except self._ray.exceptions.RayError as exc:
            raise ClusterError(f"Ray refused to start a trial ({_first_line(exc)}); expected a live cluster. Run again to resume.") from None

    def wait(self, refs: list[Any], timeout: float) -> list[tuple[Any, dict[str, Any] | None, Loss | None, str | None, str | None]]:
        """Finished refs as ``(ref, payload, loss, node, crash)``: the task's payload, or why it was lost."""
        ray = self._ray
        if not refs:
            time.sleep(min(timeout, 0.05))
            return []
        try:
            ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
            if ready and rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
        except Exception as exc:  # noqa: BLE001 - the driver lost Ray itself
            raise ClusterError(f"the driver lost the Ray cluster while waiting for trials ({_first_line(exc)}); run again to resume.") from None
        out: list[tuple[Any, dict[str, Any] | None, Loss | None, str | None, str | None]] = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref), None, None, None))
            except ray.exceptions.RayError as exc:  # cancelled, worker killed, node lost, out of memory
                loss, node = classify(exc)
                out.append((ref, None, loss, node, _first_line(exc)))
        return out

    def nodes_that_fit(self, resources: Resources) -> set[str]:
        """Ids of the live nodes whose totals can hold one trial with ``resources`` (busy or not)."""
        need = wanted(resources)
        try:
            nodes = self._ray.nodes()
        except Exception:  # noqa: BLE001 - not knowing means not narrowing the placement
            return set()
        return {n["NodeID"] for n in nodes if n.get("Alive") and all(n.get("Resources", {}).get(k, 0.0) >= v for k, v in need.items())}

    def cancel(self, refs: list[Any]) -> None:
        """Cancel tasks (queued ones are dropped, running ones' workers are killed)."""
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished, or its node is gone
                pass

    def metrics(self) -> list[tuple[str, int, Batch]]:
        """Live metric batches ``(trial_id, attempt, batch)`` that arrived since the last call (non-blocking).

        A relay that is gone for good is replaced (what it held comes back with the results).
        """
        ray = self._ray
        items: list[Any] = []
        if self._drain_ref is not None:
            try:
                ready, _ = ray.wait([self._drain_ref], timeout=0)
                if not ready:
                    return []
                items = ray.get(self._drain_ref)
            except ray.exceptions.ActorDiedError:
                self._replace_relay("its actor died")
            except ray.exceptions.RayError:
                pass  # unavailable for now (restarting): ask again next time
            self._drain_ref = None
        now = time.monotonic()
        if now - self._last_drain >= self._flush_s / 2:
            try:
                self._drain_ref = self._relay.drain.options(max_task_retries=0).remote()
            except ray.exceptions.RayError:
                self._replace_relay("it refused a call")
            self._last_drain = now
        return items

    def _replace_relay(self, why: str) -> None:
        print(f"warning: the live-metric relay was lost ({why}); started a new one on the driver's node. "
              "Running trials send their curves with their results.", file=sys.stderr)
        try:
            self._relay = self._new_relay()
        except Exception as exc:  # noqa: BLE001
            raise ClusterError(f"cannot start the live-metric relay on the driver's node ({_first_line(exc)}); run again to resume.") from None

    def final_metrics(self, wait_s: float = 2.0) -> list[tuple[str, int, Batch]]:
        """Everything still in the relay (at the end of an execution)."""
        ray = self._ray
        items: list[Any] = []
        if self._drain_ref is not None:
            try:
                items += ray.get(self._drain_ref, timeout=wait_s)
            except Exception:  # noqa: BLE001
                pass
        try:
            items += ray.get(self._relay.drain.options(max_task_retries=0).remote(), timeout=wait_s)
        except Exception:  # noqa: BLE001
            pass
        self._drain_ref = None
        return items

    def close(self) -> None:
        try:
            self._ray.kill(self._relay)
        except Exception:  # noqa: BLE001
            pass


class RayExecutor(Executor):
    """One Ray task per trial attempt, with the study's resources (see :mod:`orchestrator.execution.ray_backend`)."""

    name = "ray"

    def __init__(self, address: str | None = None, resources: Resources | None = None, flush_s: float = 1.0):
        super().__init__()
        self.connection = connect(address)
        self.resources = resources or Resources()
        self._check_feasible(cluster_resources())
        self._runner = RayRunner(flush_s=flush_s)
        self._refs: dict[Any, tuple[Trial, int]] = {}
        self._refused: dict[str, set[str]] = {}
        """Per trial, the nodes whose GPUs lacked the free memory it asks for."""

    def _check_feasible(self, available: Mapping[str, float]) -> None:
        missing = [f"{amount:g} {name} (cluster has {available.get(name, 0):g})" for name, amount in wanted(self.resources).items() if amount > available.get(name, 0)]
        advertise = (
            f" Nodes advertise GPU memory as the resource {GPU_MEMORY}: start them with "
            "ray start --resources=\"$(python -m orchestrator.execution.node)\" (cluster.yaml does)."
            if any(GPU_MEMORY in m for m in missing) else ""
        )
        if missing and not self.connection.address:
            self.close()
            raise OrchestratorError(
                f"each trial asks for {', '.join(missing)}: expected the embedded Ray to have that much. "
                f"Lower the study's resources, or join a cluster that has them with --address.{advertise}"
            )
        if missing:
            print(f"warning: each trial asks for {', '.join(missing)}; trials wait until the cluster scales up.{advertise}", file=sys.stderr)

    def slots(self, resources: Resources) -> int:
        return slots_for(resources)

    def window(self, slots: int) -> int:
        # enough queued beyond the free slots that Ray never waits on the driver
        return slots * 4 + 8

    def _leftover_metrics(self) -> list[tuple[str, int, Batch]]:
        return self._runner.final_metrics()

    def _submit(self, trial: Trial, attempt: int) -> None:
        ref = self._runner.submit(trial.to_dict(), attempt, self.resources, self._avoid(trial.trial_id))
        self._refs[ref] = (trial, attempt)

    def _avoid(self, trial_id: str) -> frozenset[str]:
        """The nodes that refused this trial for GPU memory, if another live node could take it
        (else none: excluding every node that fits would leave the trial waiting for ever)."""
        refused = self._refused.get(trial_id)
        if not refused:
            return frozenset()
        return frozenset(refused) if self._runner.nodes_that_fit(self.resources) - refused else frozenset()

    def _poll(self, timeout: float) -> list[Outcome]:
        out = []
        for ref, payload, loss, node, crash in self._runner.wait(list(self._refs), timeout):
            trial, attempt = self._refs.pop(ref)
            if payload is None:
                out.append(Outcome(trial, attempt, None, crash=crash, loss=loss, node=node))
                continue
            if "loss" in payload:  # the worker refused to start it (its GPU lacked the free memory)
                self._refused.setdefault(trial.trial_id, set()).add(payload["node"])
                out.append(Outcome(trial, attempt, None, crash=payload["detail"], loss=Loss(payload["loss"]), node=payload["node"]))
                continue
            self._refused.pop(trial.trial_id, None)
            result = TrialResult.from_dict(payload["result"])
            out.append(Outcome(trial, attempt, result, payload["curve"], payload["started_ms"], payload["last_step"], environment=payload.get("environment")))
        return out

    def _live_metrics(self) -> list[tuple[str, int, Batch]]:
        return self._runner.metrics()

    def _cancel(self) -> list[tuple[Trial, int]]:
        self._runner.cancel(list(self._refs))
        cancelled = list(self._refs.values())
        self._refs.clear()
        return cancelled

    def close(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.close()
        self.connection.close()
