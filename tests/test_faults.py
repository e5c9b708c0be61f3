"""Fault campaign on a real multi-node Ray cluster built on this machine (``ray start``
three times) and a real ``mlflow server``: a worker node lost mid-study, the head's worker
processes killed, the MLflow server stopped briefly, a second driver on another host, and a
GPU without enough free memory. Each ends with exactly one FINISHED run per trial and no
trial recorded twice.

One cluster and one server serve the whole module (starting them is most of its cost).
The nodes advertise GPUs and GPU memory as real Ray resources (``ray start --num-gpus 1
--resources '{"gpu_memory_gb": ...}'``), so Ray itself places GPU-memory trials; what the
worker then finds free comes from a probe each node names (``ORCHESTRATOR_GPU_PROBE``, the
boundary to torch on a machine without GPUs):

==========  ================  =====================  ==========================================
node        GPU memory (adv.)  free (probe)           for
==========  ================  =====================  ==========================================
head        24 GB             23.5 GB                the driver's relay; trials of every test
small       8 GB              7.9 GB                 the worker node that is lost; too small for 20 GB
busy        24 GB             12.3 GB                another process holds half its GPU
==========  ================  =====================  ==========================================

The drivers are real ``orchestrator run`` processes joining the cluster with ``--address``.
Every process this module starts is stopped by its pid (never ``ray stop``): the cluster's
processes are found by the temp dir named on their command line, and their children.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, free_port

RAY = str(Path(sys.executable).parent / "ray")


# -- processes ---------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    parents = {pid: _parent(pid) for pid in _pids()}
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def kill(pids: set[int] | list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- a Ray cluster of real nodes -------------------------------------------------------------


GPU_PROBE = """
import os


def free_gb():
    \"\"\"What this node's GPU has free: the node's own setting (a stand-in for torch.cuda.mem_get_info).\"\"\"
    return [float(os.environ["TEST_GPU_FREE_GB"])]
"""

GATED = """
import os
import time

from orchestrator.workloads.synthetic import synthetic


def gated(ctx):
    \"\"\"The synthetic workload, held at its start while the file named by the study's `gate` exists (at most 120 s).\"\"\"
    deadline = time.time() + 120
    while os.path.exists(ctx.get("gate")) and time.time() < deadline:
        time.sleep(0.1)
    return synthetic(ctx)
"""


@dataclass(frozen=True)
class Node:
    """What a node of the test cluster advertises: a GPU with ``gpu_memory_gb`` of which the probe says ``free_gb`` is free."""

    name: str
    gpu_memory_gb: float
    free_gb: float


HEAD, SMALL, BUSY = Node("head", 24, 23.5), Node("small", 8, 7.9), Node("busy", 24, 12.3)


class RayCluster:
    """A head and worker nodes started with ``ray start`` (1 CPU and 1 GPU each), with their own token and temp dir.

    Token authentication is on (Ray 2.6x); the cluster's own token travels in
    ``RAY_AUTH_TOKEN``, so nothing is written to ``~/.ray``. ``helpers`` (on every node's
    and driver's ``PYTHONPATH``) holds the GPU probe and the gated workload.
    """

    def __init__(self, root: Path):
        self.temp_dir = Path(
            __import__("tempfile").mkdtemp(prefix="rayf", dir="/tmp")
        )  # short: Ray's socket paths must stay under 108 bytes
        self.root = root
        self.token = uuid.uuid4().hex
        self.port = free_port()
        self.workers: dict[str, int] = {}  # node name -> node-manager port, for worker nodes started here
        self.helpers = root / "helpers"
        self.helpers.mkdir(exist_ok=True)
        (self.helpers / "faults_gpu_probe.py").write_text(GPU_PROBE)
        (self.helpers / "faults_gated.py").write_text(GATED)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(self.helpers), self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "ORCHESTRATOR_GPU_PROBE"):
            self.env.pop(name, None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ports(self) -> list[str]:
        return [
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        ]

    def _start(self, args: list[str], node: Node) -> subprocess.Popen:
        common = ["--num-cpus", "1", "--num-gpus", "1", "--resources", json.dumps({"gpu_memory_gb": node.gpu_memory_gb}),
                  "--node-ip-address", "127.0.0.1", "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats"]
        env = {**self.env, "ORCHESTRATOR_GPU_PROBE": "faults_gpu_probe:free_gb", "TEST_GPU_FREE_GB": str(node.free_gb)}
        out = open(self.root / f"{node.name}.log", "w")
        return subprocess.Popen([RAY, "start", *args, *common, *self._ports()], env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=self._priority if self.boost else None)

    boost = False
    """After a start that missed Ray's deadline: start the nodes at a higher priority (where allowed)."""

    @staticmethod
    def _priority() -> None:
        try:
            os.nice(-10)
        except OSError:
            pass

    def start(self, workers: tuple[Node, ...] = (), tries: int = 5) -> None:
        """Start the head, then the worker nodes (together). On a busy machine a node may miss
        Ray's 30 s start-up deadline: a failed head is cleaned up and started again, a failed
        worker node is started again under a new port (at a higher priority where allowed)."""
        for attempt in range(1, tries + 1):
            head = self._start(["--head", "--port", str(self.port), "--temp-dir", str(self.temp_dir), "--include-dashboard", "false",
                                "--ray-client-server-port", str(free_port())], HEAD)
            if head.wait(timeout=240) == 0:
                break
            self.stop()
            self.boost = True
            if attempt == tries:
                raise AssertionError(f"ray start --head failed: {(self.root / 'head.log').read_text()[-3000:]}")
        pending = list(workers)
        for attempt in range(1, tries + 1):
            starting = {}
            for node in pending:
                self.workers[node.name] = port = free_port()
                starting[node] = self._start(["--address", self.address, "--node-manager-port", str(port)], node)
            pending = [node for node, proc in starting.items() if proc.wait(timeout=240) != 0]
            if not pending:
                return
            late = self.raylets()  # a raylet that missed the deadline may still be up: it must not join later
            kill(descendants({late[self.workers[node.name]] for node in pending if self.workers[node.name] in late}))
            self.boost = True
        raise AssertionError(f"ray start (worker {pending[0].name}) failed: {(self.root / f'{pending[0].name}.log').read_text()[-3000:]}")

    def raylets(self) -> dict[int, int]:
        """Node-manager port -> raylet pid, for the live raylets of this cluster."""
        out = {}
        for pid in _pids():
            args = _cmdline(pid)
            if args and args[0].endswith("raylet/raylet") and any(str(self.temp_dir) in a for a in args):
                port = next((a.split("=", 1)[1] for a in args if a.startswith("--node_manager_port=")), None)
                if port is not None:
                    out[int(port)] = pid
        return out

    def raylet(self, node: Node) -> int:
        """The raylet pid of a node of this cluster."""
        if node is HEAD:
            return next(pid for port, pid in self.raylets().items() if port not in self.workers.values())
        return self.raylets()[self.workers[node.name]]

    def tasks_on(self, raylet: int, prefix: str = "ray::trial-") -> list[int]:
        """Pids of worker processes of one node running a task titled ``prefix...``."""
        return [pid for pid in descendants({raylet}) if (_cmdline(pid) or [""])[0].startswith(prefix)]

    def node_id(self, node: Node) -> str:
        """The Ray node id of a node (from its raylet's command line)."""
        args = _cmdline(self.raylet(node))
        return next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))

    def stop(self) -> None:
        roots = {pid for pid in _pids() if any(str(self.temp_dir) in a for a in _cmdline(pid))}
        kill(descendants(roots))


# -- a real MLflow server that can be stopped and started again ---------------------------------


class MlflowServer:
    """``mlflow server`` on a SQLite store at a fixed port; :meth:`stop` and :meth:`start` keep its data."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = root / "server" / "mlflow.db"
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300, wait: bool = True) -> None:
        """Start the server; wait until it answers unless ``wait`` is False (then call :meth:`wait`)."""
        log = open(self.root / "mlflow-server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
             "--artifacts-destination", str(self.root / "server" / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 300) -> None:
        wait_for(self.healthy, timeout, "the mlflow server to answer /health", every=0.5)

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group this fixture started: the server and its workers
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launched_server(tmp_path_factory):
    """The module's ``mlflow server``, launched first so that it starts while the cluster does."""
    mlflow_server = MlflowServer(tmp_path_factory.mktemp("faults-mlflow"))
    try:
        mlflow_server.start(wait=False)
        yield mlflow_server
    finally:
        mlflow_server.stop()


@pytest.fixture(scope="module")
def cluster(launched_server, tmp_path_factory):
    """The head and two worker nodes (small, busy; 1 CPU and 1 GPU each), real ``ray start`` processes, stopped by pid at the end."""
    root = tmp_path_factory.mktemp("faults-cluster")
    ray_cluster = RayCluster(root)
    try:
        ray_cluster.start(workers=(SMALL, BUSY))
        yield ray_cluster
    finally:
        ray_cluster.stop()


@pytest.fixture(scope="module")
def server(launched_server):
    """A real ``mlflow server`` for the module (a SQLite backend), answering; tests may stop and start it."""
    launched_server.wait()
    return launched_server


def other_host_prefix() -> list[str] | None:
    """A command prefix that runs a process under another host name (a UTS namespace), or None where
    this machine allows none: as root ``unshare --uts``, else in a user namespace of its own."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for flags in (["--uts"], ["--user", "--map-root-user", "--uts"]):
        probe = subprocess.run([unshare, *flags, "sh", "-c", "hostname gpu-node-7 && hostname"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "gpu-node-7":
            return [unshare, *flags, "sh", "-c", 'hostname gpu-node-7 && exec "$@"', "sh"]
    return None


def driver(cluster: RayCluster, server: MlflowServer, study: Path, prefix: list[str] | None = None, **env: str) -> subprocess.Popen:
    """``orchestrator run STUDY --address <the cluster> --tracking-uri <the server>``, as a user runs it
    (``prefix``: e.g. as if on another host, :func:`other_host_prefix`). Its journal goes to this
    host's journal folder of the module (``ORCHESTRATOR_JOURNAL_DIR``), never the project's."""
    command = [sys.executable, "-m", "orchestrator", "run", str(study), "--address", cluster.address, "--tracking-uri", server.url, "--no-progress"]
    env = {**cluster.env, "ORCHESTRATOR_JOURNAL_DIR": str(cluster.root / "journal"), **env}
    return subprocess.Popen([*(prefix or []), *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return output


def trial_runs(server: MlflowServer, study_name: str) -> list:
    from orchestrator.records import open_store

    store = open_store(server.url, check=False)
    experiment = store.experiment_id(study_name)
    return store.search(experiment, "tags.run_kind = 'trial'") if experiment else []


def execution_runs(server: MlflowServer, study_name: str) -> list:
    from orchestrator.records import open_store

    store = open_store(server.url, check=False)
    experiment = store.experiment_id(study_name)
    return sorted(store.search(experiment, "tags.run_kind = 'execution'"), key=lambda r: r.info.start_time) if experiment else []


def assert_nothing_lost(server: MlflowServer, study, points: int) -> dict[str, object]:
    """Exactly one FINISHED run per trial of the plan, none recorded twice, every curve complete; returns them by trial."""
    from orchestrator import make_plan
    from orchestrator.records import open_store

    runs = trial_runs(server, study.name)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    counts = collections.Counter(r.data.tags["trial_id"] for r in finished)
    assert set(counts) == {t.trial_id for t in make_plan(study).trials}, "a trial has no FINISHED run"
    assert set(counts.values()) == {1}, f"a trial was recorded FINISHED twice: {counts}"
    client = open_store(server.url, check=False).client
    for run in finished:
        steps = {p.step for p in client.get_metric_history(run.info.run_id, "loss")}
        assert set(range(points)) <= steps, f"trial {run.data.tags['trial_id'][:12]}: curve points lost, steps {sorted(steps)}"
    return {r.data.tags["trial_id"]: r for r in finished}


def assert_one_line(output: str) -> None:
    assert "Traceback" not in output, output[-3000:]


# -- the lease, against the module's MLflow server ---------------------------------------------------


@pytest.fixture(scope="module")
def store(cluster, server):
    """The module's server as the lease tests' store (a new store costs seconds; the module
    starts the cluster and the server anyway, together); each test reads only the runs it made."""
    from orchestrator.records import open_store

    return open_store(server.url)


def parent_with_lease(store, holder: str, age_s: float, ttl_s: float = 30.0, variant: str = "smoke"):
    from orchestrator.records.lease import LeaseState

    experiment = store.experiment_id("leased", create=True)
    state = LeaseState(holder, int(time.time() * 1000 - age_s * 1000), ttl_s)
    run = store.client.create_run(experiment, tags={"run_kind": "execution", "study": "leased", "variant": variant,
                                                    "execution_id": f"E-{holder}", "orchestrator.lease": state.to_tag()})
    return store.client.get_run(run.info.run_id)


def test_a_fresh_lease_on_another_host_refuses_with_who_and_how_old(store):
    from orchestrator.records import ExecutionInProgressError
    from orchestrator.records.lease import Lease

    run = parent_with_lease(store, "gpu-node-7:4242:beef", age_s=3)
    with pytest.raises(ExecutionInProgressError, match=r"study 'leased' \(variant 'smoke'\) is being executed by another driver \(gpu-node-7:4242, execution E-gpu-node-7:4242:beef, lease renewed \d+ s ago \(good for 30 s\)\); expected none"):
        Lease(store).check([run], "smoke")
    stale, live = Lease(store).check([run], "full")  # another variant runs beside it, untouched
    assert stale == [] and live == {"E-gpu-node-7:4242:beef"}


def test_a_stale_lease_or_a_dead_holder_here_is_taken_over(store):
    import socket

    from orchestrator.records.lease import Lease

    stale_elsewhere = parent_with_lease(store, "gpu-node-7:4242:beef", age_s=45)
    dead_here = parent_with_lease(store, f"{socket.gethostname()}:{2**22 + 12345}:cafe", age_s=1)  # no such pid
    lease = Lease(store)
    stale, live = lease.check([stale_elsewhere, dead_here], "smoke")
    assert {r.info.run_id for r in stale} == {stale_elsewhere.info.run_id, dead_here.info.run_id} and live == set()
    assert re.match(r"stale: its lease \(held by gpu-node-7:4242\) was last renewed 4\d s ago; taken over by ", lease.describe_stale(stale_elsewhere))


def test_the_holder_learns_it_was_taken_over_and_stops_recording(store):
    from orchestrator.records.lease import Lease

    run = parent_with_lease(store, "placeholder:1:0", age_s=0)
    lease = Lease(store, ttl_s=4)
    store.client.set_tag(run.info.run_id, "orchestrator.lease", lease.tag())
    lost = []
    lease.on_lost = lost.append
    lease.start(run.info.run_id)
    try:
        assert lease.renew() is True and lease.held()
        store.client.set_terminated(run.info.run_id, "KILLED")  # what a driver taking over does
        assert lease.renew() is False
    finally:
        lease.stop()
    assert not lease.held() and lost == [lease.lost] and "another driver took over this execution" in lease.lost


def test_the_lease_time_to_live_setting_is_checked(monkeypatch):
    from orchestrator.errors import OrchestratorError
    from orchestrator.records.lease import lease_ttl

    monkeypatch.setenv("ORCHESTRATOR_LEASE_TTL_S", "soon")
    with pytest.raises(OrchestratorError, match=r"ORCHESTRATOR_LEASE_TTL_S: expected a number of seconds >= 1 \(the lease time to live\), found 'soon'"):
        lease_ttl()
    monkeypatch.setenv("ORCHESTRATOR_LEASE_TTL_S", "0.5")
    with pytest.raises(OrchestratorError, match="found '0.5'"):
        lease_ttl()
    monkeypatch.delenv("ORCHESTRATOR_LEASE_TTL_S")
    assert lease_ttl() == 30.0 and lease_ttl(6) == 6.0


# -- the executor contract under faults (a scripted executor: Ray cannot be made to fail on cue) ----


class ScriptedExecutor:
    """An executor whose attempts end as a script says: a result, a loss, or a failure of the cluster."""

    @staticmethod
    def make(script):
        from orchestrator.design.trial import TrialResult, TrialState
        from orchestrator.execution.executor import ClusterError, Executor, Outcome

        class Scripted(Executor):
            def __init__(self):
                super().__init__()
                self.submitted: list[tuple[str, int]] = []
                self._ready: list = []

            def _submit(self, trial, attempt):
                self.submitted.append((trial.trial_id, attempt))
                step = script(trial, attempt)
                if step == "cluster":
                    self._ready.append(ClusterError("the driver lost the Ray cluster while waiting for trials (RaySystemError: gone); run again to resume."))
                elif step is None:
                    self._ready.append(Outcome(trial, attempt, TrialResult(trial_id=trial.trial_id, state=TrialState.FINISHED, attempts=attempt)))
                elif step == "pending":
                    pass  # stays in flight
                else:
                    loss, node = step
                    self._ready.append(Outcome(trial, attempt, None, crash=f"{loss.name}: scripted", loss=loss, node=node))

            def _poll(self, timeout):
                if self._ready and isinstance(self._ready[0], Exception):
                    raise self._ready.pop(0)
                ready = []
                while self._ready and not isinstance(self._ready[0], Exception):
                    ready.append(self._ready.pop(0))
                return ready

            def _cancel(self):
                return []

        return Scripted()


def test_a_node_loss_is_retried_and_charged_once_per_node(write_study):
    import threading

    from orchestrator.execution.executor import Loss

    from orchestrator import load_study, make_plan

    trials = make_plan(load_study(write_study("scripted_loss", {"A": [0, 1]}), "full")).trials
    victim = trials[0].trial_id
    lost_on = {1: "node-a", 2: "node-a", 3: "node-b"}  # the same node twice is one retry; a second node is another
    executor = ScriptedExecutor.make(lambda t, n: (Loss.NODE_LOST, lost_on[n]) if t.trial_id == victim else None)
    done, lost = [], []
    executor.on_lost = lambda trial, attempt, reason: lost.append((attempt, reason))
    stopped = executor.run(trials, retries=0, window=4, on_done=done.append, on_killed=lambda t, a: None, stop=threading.Event())
    assert not stopped and executor.error is None
    outcome = next(o for o in done if o.trial.trial_id == victim)
    assert outcome.result.state.value == "FAILED" and outcome.result.attempts == 3
    assert outcome.retry_reasons == ["node lost", "node lost"] and lost == [(1, "node lost"), (2, "node lost")]
    assert "attempt 3 of this trial was lost (node lost with node node-b: NODE_LOST: scripted)" in outcome.result.error
    assert executor.retried == {"node lost": 1} and executor.retries_used == 2


def test_a_failure_of_the_cluster_in_the_driver_loop_is_a_recorded_stop_not_a_crash(write_study):
    import threading

    from orchestrator import load_study, make_plan

    trials = make_plan(load_study(write_study("scripted_cluster", {"A": [0, 1, 2]}), "full")).trials
    script = {trials[0].trial_id: None, trials[1].trial_id: "pending", trials[2].trial_id: "cluster"}
    executor = ScriptedExecutor.make(lambda t, n: script[t.trial_id])
    done, killed = [], []
    stopped = executor.run(trials, retries=1, window=3, on_done=done.append, on_killed=lambda t, a: killed.append(t.trial_id), stop=threading.Event())
    assert stopped and executor.error.startswith("the driver lost the Ray cluster")
    assert [o.trial.trial_id for o in done] == [trials[0].trial_id], "what came back before the failure is recorded"
    assert sorted(killed) == sorted([trials[1].trial_id, trials[2].trial_id]), "what was in flight is recorded KILLED"


# -- the campaign -------------------------------------------------------------------------------

LONG = {"duration_s": 1.2, "sleep": True, "metric_points": 6}
STARTUP_S = 300
"""How long a driver may take to reach its first trial (seconds on an idle machine; minutes on a loaded one)."""


@pytest.mark.slow
def test_a_lost_worker_node_is_a_retried_trial_not_a_driver_crash(cluster, server, write_study):
    from orchestrator import load_study

    path = write_study("node_lost", {"A": list(range(8))}, LONG)
    study = load_study(path, "full")
    worker = cluster.raylet(SMALL)
    proc = driver(cluster, server, path)
    try:
        wait_for(lambda: cluster.tasks_on(worker), STARTUP_S, "a trial running on the worker node")
        kill(descendants({worker}))  # the whole node: its raylet and every process of it
    finally:
        output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert_one_line(output)
    assert "retried because a node was lost" in output
    by_trial = assert_nothing_lost(server, study, LONG["metric_points"])
    lost = [r for r in by_trial.values() if "node lost" in r.data.tags.get("orchestrator.retry_reasons", "")]
    assert lost and all(int(r.data.tags["attempts"]) >= 2 for r in lost)
    parent = execution_runs(server, study.name)[-1]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_retried_node_lost"] == len(lost)


@pytest.mark.slow
def test_killed_worker_processes_of_the_head_are_retried_and_the_relay_comes_back(cluster, server, write_study):
    from orchestrator import load_study

    path = write_study("head_workers_killed", {"A": list(range(6))}, LONG)
    study = load_study(path, "full")
    head = cluster.raylet(HEAD)
    proc = driver(cluster, server, path)
    killed: list[int] = []
    try:
        wait_for(lambda: cluster.tasks_on(head), STARTUP_S, "a trial running on the head node")
        time.sleep(1.2)  # past the first live batch
        # every worker process of the head: trials and the live-metric relay (not the node's agents)
        victims = [pid for pid in cluster.tasks_on(head, "ray::") if "Agent" not in _cmdline(pid)[0]]
        kill(victims)
        killed += victims
    finally:
        output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert_one_line(output)
    by_trial = assert_nothing_lost(server, study, LONG["metric_points"])
    retried = [r for r in by_trial.values() if r.data.tags.get("orchestrator.retry_reasons")]
    assert killed and retried and all(r.data.tags["orchestrator.retry_reasons"] == "worker died" for r in retried)


@pytest.mark.slow
def test_the_mlflow_server_stopped_briefly_loses_no_record(cluster, server, write_study):
    from orchestrator import load_study

    path = write_study("server_stopped", {"A": list(range(6))}, LONG)
    study = load_study(path, "full")
    proc = driver(cluster, server, path, ORCHESTRATOR_RECORD_RETRY_S="600")  # however long the restart takes here
    try:
        wait_for(lambda: any(r.info.status == "FINISHED" for r in trial_runs(server, study.name)), STARTUP_S, "a first finished trial")
        server.stop()
        time.sleep(1)
        server.start()
    finally:
        output = finish(proc, timeout=240)
    assert proc.returncode == 0, output[-3000:]
    assert_one_line(output)
    assert_nothing_lost(server, study, LONG["metric_points"])
    assert execution_runs(server, study.name)[-1].info.status == "FINISHED"


STUDY_WITH_RESOURCES = """
from orchestrator import Factor, Study, Variant

study = Study(name={name!r}, workload={workload!r}, factors=[Factor("A", {levels!r})], params={params!r},
              metrics={{"response": "minimize"}}, seed=11, resources={resources!r},
              variants={{"smoke": Variant(replicates=1), "full": Variant()}})
"""


def study_file(folder: Path, name: str, levels: list, params: dict, workload: str = "synthetic", resources: dict | None = None) -> Path:
    path = folder / f"{name}.py"
    path.write_text(STUDY_WITH_RESOURCES.format(name=name, workload=workload, levels=levels, params=params, resources=resources))
    return path


@pytest.mark.slow
def test_a_second_driver_refuses_while_the_lease_is_fresh_and_takes_over_once_stale(cluster, server, tmp_path):
    """The first driver runs on "another host" (its own host name); its trials wait on a gate
    file, so it is still running, however slowly a second driver starts, until the test has seen
    the refusal. Killed without a word (a host lost, kill -9), its lease goes stale after its
    time to live, and a third driver takes over and runs what is left (the gate is open by then)."""
    from orchestrator import load_study

    gate = tmp_path / "gate"
    gate.touch()
    path = study_file(tmp_path, "second_driver", list(range(6)), {**LONG, "gate": str(gate)}, workload="faults_gated:gated")
    study = load_study(path, "full")
    elsewhere = other_host_prefix()
    lease = {"ORCHESTRATOR_LEASE_TTL_S": "8"}  # short, yet safe from a renewal slowed by a busy machine (renewed every 2 s)
    disk = {"ORCHESTRATOR_JOURNAL_DIR": str(tmp_path / "gpu-node-7-disk")} if elsewhere is not None else {}  # that host's own journal
    first = driver(cluster, server, path, prefix=elsewhere, **lease, **disk)
    try:
        wait_for(lambda: any(cluster.tasks_on(raylet) for raylet in cluster.raylets().values()), STARTUP_S, "the first driver's trials")
        second = driver(cluster, server, path, **lease)
        refused = finish(second)
        assert second.returncode == 2, refused[-3000:]
        assert "is being executed by another driver" in refused and "lease renewed" in refused
        assert ("(gpu-node-7:" in refused) == (elsewhere is not None)
        assert_one_line(refused)
        gate.unlink()  # trials may finish from now on (the first driver may record some before it dies)
        wait_for(lambda: any(r.info.status == "FINISHED" for r in trial_runs(server, study.name)), STARTUP_S, "a first finished trial")
        # The first driver dies without a word (a host lost, kill -9). (A frozen, SIGSTOPped driver
        # is not used here: the trials it had queued wait on it and keep the cluster's CPUs; the
        # holder that wakes up and stops is tested on a real store above.)
        first.kill()
        first.wait(timeout=60)
        if elsewhere is not None:  # another host's lease is stale only after its time to live (this host's: at once, its pid is gone)
            time.sleep(8.5)
        third = driver(cluster, server, path, **lease)
        took_over = finish(third, timeout=400)
    finally:
        if first.poll() is None:
            first.kill()
    assert third.returncode == 0, took_over[-3000:]
    assert "already done" in took_over  # resumed: the dead driver's finished trials are not run again
    assert_nothing_lost(server, study, LONG["metric_points"])
    executions = execution_runs(server, study.name)
    assert [r.info.status for r in executions] == ["KILLED", "FINISHED"]
    closed_by = executions[0].data.tags["orchestrator.closed_by"]
    if elsewhere is not None:  # its journal is on its own host: only the stale lease lets this driver take over
        assert re.match(r"stale: its lease \(held by gpu-node-7:\d+\) was last renewed \d+ s ago; taken over by ", closed_by), closed_by
    else:  # closed by the lease check (its holder's pid is gone) or by the replay of its journal here
        assert closed_by.startswith(("stale: its lease", "orchestrator sync")), closed_by


@pytest.mark.slow
def test_a_gpu_without_the_free_memory_a_trial_needs_is_a_retried_loss_placed_elsewhere(cluster, server, tmp_path):
    """Ray places 20 GB trials only on the nodes that advertise 24 GB (head, busy), never on the
    8 GB node; on the busy node the worker finds 12.3 GB free and the attempt comes back as a
    loss without running; its retry avoids that node and finishes on the head."""
    from orchestrator import load_study

    resources = {"cpus": 0.5, "gpus": 1, "gpu_memory_gb": 20}
    path = study_file(tmp_path, "gpu_memory", list(range(4)), LONG, resources=resources)
    study = load_study(path, "full")
    busy = cluster.node_id(BUSY)
    proc = driver(cluster, server, path)
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert_one_line(output)
    by_trial = assert_nothing_lost(server, study, LONG["metric_points"])
    reasons = {t: r.data.tags.get("orchestrator.retry_reasons", "") for t, r in by_trial.items()}
    refused = [why for why in reasons.values() if why]
    # two trials start at once, one per 24 GB node (one GPU each): the busy node refuses one
    assert refused, f"no trial reached the busy node: {reasons}"
    assert all(why == f"gpu memory (12.3 GB free, 20 GB needed on node {busy[:12]})" for why in refused), refused  # once each: the retry went elsewhere
    assert not any("7.9 GB" in why for why in reasons.values())  # the 8 GB node never got one
    parent = execution_runs(server, study.name)[-1]
    assert parent.info.status == "FINISHED" and parent.data.metrics["retries_used"] == len(refused)
    assert parent.data.metrics["trials_retried_gpu_memory"] == len(refused)
    plural = "s" if len(refused) != 1 else ""
    assert f"{len(refused)} trial{plural} retried because a node had too little free GPU memory" in output
