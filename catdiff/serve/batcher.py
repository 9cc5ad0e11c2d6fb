"""Micro-batching: requests that arrive close together share network evaluations.

One worker thread takes the oldest waiting job, waits up to ``window_s`` for more jobs with the
same sampling settings, and runs them as one batch (their images side by side), so N concurrent
requests cost about one batch of sampling instead of N. Admission is by cost (a job's images
times the network evaluations each takes): the work queued and running is bounded, so a job
waits behind a bounded amount of work; one that would overflow the bound is refused at once
(the web layer answers 503). The last quarter of the bound is kept for small jobs (those
costing at most that quarter), so that costly ones cannot fill the queue and shut cheap ones
out. Finished jobs are kept for polling, bounded by bytes and by age.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queued work would pass ``max_cost``; try again later."""


def job_id() -> str:
    """An id no other caller can guess: 96 random bits."""
    return secrets.token_urlsafe(12)


@dataclass
class Job:
    """One request: ``images`` images made with ``key``'s settings at ``cost``; ``steps_done`` counts up."""

    key: Hashable
    images: int
    params: dict[str, Any]
    cost: int = 1
    id: str = field(default_factory=job_id)
    steps_done: int = 0
    future: Future = field(default_factory=Future)
    finished_at: float | None = None  # time.monotonic() when its result or error was set
    size: int = 0  # bytes its result holds


RunBatch = Callable[[list[Job]], list[Any]]


@dataclass
class Metrics:
    batches: int = 0
    jobs: int = 0
    rejected: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # jobs per batch, newest last (bounded)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "jobs": self.jobs,
            "rejected": self.rejected,
            "largest_batch": max(self.batch_sizes, default=0),
            "recent_batch_sizes": self.batch_sizes[-100:],
        }


class MicroBatcher:
    """Runs jobs in shared batches on one worker thread.

    ``run_batch(jobs)`` returns one result per job, in order; an exception fails every job of
    that batch. At most ``max_batch_images`` images go into one batch, and the jobs waiting or
    running cost at most ``max_cost`` together. Finished jobs are forgotten after ``retain_s``
    seconds, or sooner, oldest first, while their results (``result_size`` bytes each) hold more
    than ``max_retained_bytes``.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_images: int = 32,
        max_cost: int = 1024,
        window_s: float = 0.05,
        result_size: Callable[[Any], int] = lambda result: 0,
        max_retained_bytes: int = 64 * 2**20,
        retain_s: float = 600.0,
    ) -> None:
        self.run_batch, self.result_size = run_batch, result_size
        self.max_batch_images, self.max_cost, self.window_s = max_batch_images, max_cost, window_s
        self.max_retained_bytes, self.retain_s = max_retained_bytes, retain_s
        self.metrics = Metrics()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue but not fitting the current batch
        self._pending_cost = 0
        self._lock = threading.Lock()
        self.jobs: dict[str, Job] = {}  # submitted, oldest first
        self._thread = threading.Thread(target=self._work, name="catdiff-batcher", daemon=True)
        self._thread.start()

    @property
    def pending_cost(self) -> int:
        """The cost of the jobs waiting or running."""
        return self._pending_cost

    def submit(self, key: Hashable, images: int, params: dict[str, Any], cost: int = 1) -> Job:
        reserve = self.max_cost // 4  # for small jobs only
        limit = self.max_cost if cost <= reserve else self.max_cost - reserve
        with self._lock:
            if self._pending_cost + cost > limit:
                self.metrics.rejected += 1
                raise QueueFull(f"work of cost {self._pending_cost} is queued (at most {self.max_cost})")
            self._pending_cost += cost
            job = Job(key, images, params, cost=cost)
            self._forget_old_jobs()
            self.jobs[job.id] = job
        self._queue.put(job)
        return job

    def _forget_old_jobs(self) -> None:
        """Drop finished jobs past their age, then the oldest finished while results hold too many bytes."""
        now = time.monotonic()
        finished = [job for job in self.jobs.values() if job.finished_at is not None]
        held = sum(job.size for job in finished)
        for job in finished:
            if now - (job.finished_at or now) > self.retain_s or held > self.max_retained_bytes:
                held -= job.size
                del self.jobs[job.id]

    def _next_job(self, timeout: float | None) -> Job | None:
        if self._held:
            return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _gather(self, first: Job) -> list[Job]:
        """``first`` and the jobs with its key that arrive within the window and fit."""
        batch, images = [first], first.images
        deadline = time.monotonic() + self.window_s
        skipped: list[Job] = []
        while images < self.max_batch_images:
            job = self._next_job(timeout=max(0.0, deadline - time.monotonic()))
            if job is None:
                break
            if job.key == first.key and images + job.images <= self.max_batch_images:
                batch.append(job)
                images += job.images
            else:
                skipped.append(job)
        self._held = skipped + self._held
        return batch

    def _work(self) -> None:
        while True:
            first = self._next_job(timeout=None)
            if first is None:
                continue
            batch = self._gather(first)
            try:
                results = self.run_batch(batch)
            except Exception as error:  # every request of the batch gets the failure
                for job in batch:
                    job.future.set_exception(error)
            else:
                for job, result in zip(batch, results, strict=True):
                    job.size = self.result_size(result)
                    job.future.set_result(result)
            with self._lock:
                for job in batch:
                    job.finished_at = time.monotonic()
                self._pending_cost -= sum(job.cost for job in batch)
                self.metrics.batches += 1
                self.metrics.jobs += len(batch)
                self.metrics.batch_sizes = (self.metrics.batch_sizes + [len(batch)])[-1000:]
