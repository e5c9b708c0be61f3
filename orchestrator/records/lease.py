"""An execution's lease on its study and variant: one driver at a time, on any host.

The driver that executes a study holds a **lease**: the tag ``orchestrator.lease`` on its
parent run (who holds it, when it was last renewed, for how long it is good), renewed by a
background thread every quarter of its time to live. A second ``orchestrator run`` of the
same study and variant, on this host or any other that shares the store:

* refuses (:class:`~orchestrator.records.store.ExecutionInProgressError`) while the lease
  is fresh - renewed less than ``ttl_s`` ago;
* takes over once it is stale (its driver died, hung, or lost its network): the old
  execution and its runs left RUNNING are closed as KILLED, and the new one resumes.

A lease whose holder is a process of this host that no longer exists is stale at once (a
driver killed here is taken over without waiting). A parent run from before leases existed
has no lease tag: it counts as held while its driver (``driver`` tag, ``host:pid``) is a
live process on this host, else as stale.

The holder fences itself: once three quarters of ``ttl_s`` have passed since its last
successful renewal (its own monotonic clock, counted from before the renewal was sent),
:meth:`Lease.held` asks the store before answering - so a driver that was frozen (SIGSTOP,
a suspended VM) learns it was taken over before it records a finished trial, and records
it as KILLED instead (the driver that took over runs it). While the store does not answer
at all, the lease counts as held: nobody else can take over through a store that is down. When the holder sees that
its execution was closed or its lease taken, :attr:`Lease.lost` says so and ``on_lost`` is
called once.

Clocks: freshness compares the renewal time written by the holder with the reader's clock,
so hosts' clocks must agree to well within ``ttl_s`` (30 s by default; NTP keeps them
within milliseconds). ``ORCHESTRATOR_LEASE_TTL_S`` sets ``ttl_s`` (tests use a few seconds).

Example:
    >>> lease = Lease(store)                                   # doctest: +SKIP
    >>> stale = lease.check(parents, variant="smoke")          # raises if a fresh lease is held
    >>> lease.start(parent_run_id)                             # doctest: +SKIP
    >>> lease.held()                                           # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import OrchestratorError
from . import tags as T
from .store import ExecutionInProgressError

if TYPE_CHECKING:
    from mlflow.entities import Run

    from .store import TrackingStore

__all__ = ["DEFAULT_TTL_S", "Lease", "LeaseState", "TTL_ENV", "lease_ttl"]

TTL_ENV = "ORCHESTRATOR_LEASE_TTL_S"
DEFAULT_TTL_S = 30.0
"""A lease not renewed for this long is stale (renewed every quarter of it)."""
_HOLD_MARGIN = 0.75
"""The holder stops trusting its lease after this fraction of ``ttl_s`` without a renewal."""


def lease_ttl(value: float | str | None = None) -> float:
    """The lease time to live: ``value``, else ``$ORCHESTRATOR_LEASE_TTL_S``, else 30 s.

    Raises:
        OrchestratorError: not a number of seconds >= 1.
    """
    raw = value if value is not None else os.environ.get(TTL_ENV)
    if raw is None or raw == "":
        return DEFAULT_TTL_S
    try:
        ttl = float(raw)
    except (TypeError, ValueError):
        ttl = float("nan")
    if not ttl >= 1.0:
        raise OrchestratorError(f"{TTL_ENV}: expected a number of seconds >= 1 (the lease time to live), found {raw!r}. Unset it for the default {DEFAULT_TTL_S:g} s.")
    return ttl


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class LeaseState:
    """What a parent run's lease tag says.

    Attributes:
        holder: ``host:pid:token`` of the driver holding it.
        renewed_ms: when it was last renewed (the holder's clock, ms since the epoch).
        ttl_s: how long after a renewal it is good.
    """

    holder: str
    renewed_ms: int
    ttl_s: float

    @classmethod
    def parse(cls, text: str | None) -> "LeaseState | None":
        """The lease in a tag value, or ``None`` (no tag, or not a lease)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(holder=str(data["holder"]), renewed_ms=int(data["renewed_ms"]), ttl_s=float(data["ttl_s"]))
        except (ValueError, KeyError, TypeError):
            return None

    def to_tag(self) -> str:
        return json.dumps({"holder": self.holder, "renewed_ms": self.renewed_ms, "ttl_s": self.ttl_s}, sort_keys=True)

    def age_s(self, now_ms: int | None = None) -> float:
        return ((now_ms if now_ms is not None else _now_ms()) - self.renewed_ms) / 1000.0

    def fresh(self, now_ms: int | None = None) -> bool:
        return self.age_s(now_ms) < self.ttl_s


def _legacy_driver_alive(tag: str | None) -> bool:
    """Whether the driver named by ``host:pid`` (runs without a lease) is a live process on this host (not us)."""
    if not tag or ":" not in tag:
        return False
    host, _, pid = tag.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone_here(holder: str) -> bool:
    """Whether ``host:pid:token`` names a process of this host that no longer exists (its lease can be taken at once)."""
    host, pid, _ = (holder.split(":") + ["", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """This driver's lease on one execution (see the module docstring).

    Attributes:
        holder: ``host:pid:token``, unique to this driver.
        ttl_s: time to live of the lease.
        lost: why the lease was lost (another driver took over, the run was closed), else ``None``.
        on_lost: called once, from the renewal thread, with :attr:`lost`.
    """

    def __init__(self, store: "TrackingStore", ttl_s: float | None = None):
        self.store = store
        self.ttl_s = lease_ttl(ttl_s)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] = lambda why: None
        self.renewals = 0
        self._run_id: str | None = None
        self._last_ok = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- before the execution opens ---------------------------------------------------------
    def check(self, parents: Iterable["Run"], variant: str | None) -> tuple[list["Run"], set[str]]:
        """Refuse if another driver holds a fresh lease on ``variant``; else say what may be closed.

        Args:
            parents: the study's parent runs (every variant).
            variant: the variant about to run.

        Returns:
            ``(stale, live)``: the RUNNING parent runs whose lease is stale (to close as
            KILLED), and the execution ids whose lease is fresh (other variants: leave
            their runs alone).

        Raises:
            ExecutionInProgressError: a RUNNING execution of the same study and variant holds a fresh lease.
        """
        now = _now_ms()
        stale: list[Run] = []
        live: set[str] = set()
        for run in parents:
            if run.info.status != "RUNNING":
                continue
            tags = run.data.tags
            state = LeaseState.parse(tags.get(T.LEASE))
            if state is None:
                held = _legacy_driver_alive(tags.get(T.DRIVER))
            else:  # a fresh lease, unless its holder is a process of this host that is gone
                held = state.fresh(now) and not _gone_here(state.holder)
            if not held:
                stale.append(run)
                continue
            live.add(tags.get(T.EXECUTION_ID, ""))
            if tags.get(T.VARIANT) == str(variant):
                who = state.holder.rsplit(":", 1)[0] if state is not None else tags.get(T.DRIVER)
                renewed = f", lease renewed {max(state.age_s(now), 0.0):.0f} s ago (good for {state.ttl_s:g} s)" if state is not None else ""
                raise ExecutionInProgressError(
                    f"study {tags.get(T.STUDY)!r} (variant {variant!r}) is being executed by another driver ({who}, execution "
                    f"{tags.get(T.EXECUTION_ID)}{renewed}); expected none. Wait for it to end or stop it with Ctrl-C; "
                    "if its driver is gone, run again once its lease is stale and this run takes over."
                )
        return stale, live

    def describe_stale(self, run: "Run") -> str:
        """Why a stale execution is closed (the ``orchestrator.closed_by`` tag)."""
        state = LeaseState.parse(run.data.tags.get(T.LEASE))
        if state is None:
            return "stale: its driver is gone"
        return f"stale: its lease (held by {state.holder.rsplit(':', 1)[0]}) was last renewed {state.age_s():.0f} s ago; taken over by {self.holder.rsplit(':', 1)[0]}"

    # -- while the execution runs -------------------------------------------------------------
    def tag(self) -> str:
        """The lease tag value for now (written with the parent run, then renewed)."""
        return LeaseState(self.holder, _now_ms(), self.ttl_s).to_tag()

    def start(self, run_id: str) -> None:
        """Hold the lease on ``run_id`` (its tag is already written): renew it every ``ttl_s / 4``."""
        self._run_id = run_id
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._renew_loop, name="orchestrator-lease", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether this driver may still record finished trials: not lost, and renewed recently,
        or, if not (frozen, or a slow store), the store says so now."""
        if self.lost is not None:
            return False
        if time.monotonic() - self._last_ok < self.ttl_s * _HOLD_MARGIN:
            return True
        # not renewed lately: this process was frozen, or the store is slow or down. Ask the store
        # now (this waits for it): lost -> False; a store that does not answer -> held, since
        # nobody can take over through a store that is down.
        return self.renew() is not False

    def stop(self) -> None:
        """Stop renewing (the execution is ending; its parent run is closed next)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
            self._thread = None

    def _renew_loop(self) -> None:
        interval = self.ttl_s / 4
        while not self._stop.wait(interval):
            if self.renew() is False:
                return

    def renew(self) -> bool | None:
        """Renew once: True renewed, False lost (stop renewing), None the store did not answer (try again)."""
        with self._lock:  # the renewal thread and held() may both ask
            return self._renew()

    def _renew(self) -> bool | None:
        if self._run_id is None or self.lost is not None:
            return False
        client = self.store.client
        sent = time.monotonic()
        try:
            run = client.get_run(self._run_id)
            state = LeaseState.parse(run.data.tags.get(T.LEASE))
            if run.info.status != "RUNNING" or (state is not None and state.holder != self.holder):
                taker = state.holder.rsplit(":", 1)[0] if state is not None and state.holder != self.holder else None
                closed_by = run.data.tags.get(T.CLOSED_BY)
                self._lose(
                    f"another driver took over this execution ({closed_by or taker or 'its run was closed as ' + run.info.status}); "
                    "this driver stopped. Its trials are recorded by the driver that took over."
                )
                return False
            client.set_tag(self._run_id, T.LEASE, self.tag())
        except Exception:  # noqa: BLE001 - a store outage: keep the last renewal, try again next time
            return None
        self._last_ok = sent
        self.renewals += 1
        return True

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            self.on_lost(why)
