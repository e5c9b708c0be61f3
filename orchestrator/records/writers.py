"""A pool of MLflow writer threads with one retry budget.

Per-trial runs are what a person browses in the MLflow UI, and an MLflow server takes
them at a few to a few tens per second, most of it waiting on the network and the
server's database. One writer leaves most of that capacity idle; :class:`WriterPool` keeps
``writers`` calls in flight. Jobs carry a *key* (the trial id): jobs of one key run one at
a time, in order, so a trial's live metric batches always precede its final record.

The threads share one queue of keys: whichever thread is free takes the next key with work
(then that key's next job goes to the back of the queue). A queue per thread, with keys
hashed to threads, left threads idle while others still had a backlog - with 150 trials on
8 threads the busiest queue held about 1.5 times the average, so the pool ran at about two
thirds of its width at the end of every execution, and one slow call held up every trial
hashed behind it.

A job that raises is retried with backoff until the store has been failing for longer
than ``retry_budget_s`` (counted from the first failure since the last success, shared
by all threads); then it, and every later job while the store stays down, is given up
and counted in :attr:`WriterPool.given_up` - its trial is still in the journal, and
``orchestrator sync`` (or the next ``run``) writes it. The MLflow client's own HTTP
retries are turned off for the driver (unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` is set),
so this budget is the one that counts.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

__all__ = ["WriterPool"]

Job = Callable[[], None]


class WriterPool:
    """``writers`` threads, each draining its own queue (see the module doc).

    Args:
        writers: threads (calls in flight at once).
        retry_budget_s: how long the store may keep failing before jobs are given up.
        on_give_up: called with ``(key, error text)`` for each job given up.
    """

    def __init__(self, writers: int, retry_budget_s: float, on_give_up: Callable[[str, str], None] = lambda key, error: None):
        self.writers = max(1, int(writers))
        self.retry_budget_s = float(retry_budget_s)
        self.given_up = 0
        self.errors: list[str] = []
        self._on_give_up = on_give_up
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._last_error = ""
        self._work = threading.Condition()
        self._jobs: dict[str, collections.deque[Job]] = {}
        """Per key, its jobs not started yet; a key is here while it has a job queued or running."""
        self._ready: collections.deque[str] = collections.deque()
        """Keys with a job to start and none running, oldest first."""
        self._unfinished = 0
        self._closing = False
        self._threads = [threading.Thread(target=self._loop, name=f"orchestrator-writer-{i}", daemon=True) for i in range(self.writers)]
        for thread in self._threads:
            thread.start()

    def put(self, key: str, job: Job) -> None:
        """Queue ``job``; jobs with the same ``key`` run one at a time, in the order they were put."""
        with self._work:
            queued = self._jobs.get(key)
            if queued is None:
                self._jobs[key] = collections.deque([job])
                self._ready.append(key)
            else:  # the key is waiting or running: its next job follows
                queued.append(job)
            self._unfinished += 1
            self._work.notify()

    @property
    def queued(self) -> int:
        """Jobs put and not finished yet (running ones included)."""
        with self._work:
            return self._unfinished

    def flush(self) -> None:
        """Wait until every job queued so far has run or been given up."""
        with self._work:
            while self._unfinished:
                self._work.wait()

    def close(self) -> None:
        """Finish every queued job, then stop the threads."""
        self.flush()
        with self._work:
            self._closing = True
            self._work.notify_all()
        for thread in self._threads:
            thread.join()

    def store_down(self) -> bool:
        """Whether the store has been failing for longer than the retry budget."""
        with self._lock:
            return self._failing_since is not None and time.monotonic() - self._failing_since > self.retry_budget_s

    def _failed(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            return now - self._failing_since

    def _succeeded(self) -> None:
        with self._lock:
            self._failing_since = None

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._ready and not self._closing:
                    self._work.wait()
                if not self._ready:
                    return
                key = self._ready.popleft()
                job = self._jobs[key].popleft()
            try:
                self._run(key, job)
            finally:
                with self._work:
                    if self._jobs[key]:
                        self._ready.append(key)
                    else:
                        del self._jobs[key]
                    self._unfinished -= 1
                    self._work.notify_all()

    def _run(self, key: str, job: Job) -> None:
        delay = 0.2
        while True:
            if self.store_down():
                self._give_up(key, f"the store has failed for longer than the retry budget ({self.retry_budget_s:g} s): {self._last_error}")
                return
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - any store failure: retry within the budget
                failing = self._failed()
                self._last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if failing > self.retry_budget_s:
                    self._give_up(key, f"the store has failed for longer than the retry budget ({self.retry_budget_s:g} s): {self._last_error}")
                    return
                time.sleep(min(delay, max(0.05, self.retry_budget_s - failing + 0.05)))
                delay = min(delay * 2, 5.0)
                continue
            self._succeeded()
            return

    def _give_up(self, key: str, error: str) -> None:
        with self._lock:
            self.given_up += 1
            if len(self.errors) < 20:
                self.errors.append(f"{key}: {error}")
        self._on_give_up(key, error)
