"""Micro-batching: requests that arrive close together share network evaluations.

One worker thread takes the oldest waiting job, waits up to ``window_s`` for more jobs with the
same sampling settings, and runs them as one batch (their images side by side), so N concurrent
requests cost about one batch of sampling instead of N. The queue is bounded: a job that would
overflow it is refused at once, and the web layer answers 503.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


class QueueFull(Exception):
    """The queue holds ``max_pending`` images already; try again later."""


@dataclass
class Job:
    """One request: ``images`` images made with ``key``'s settings; ``steps_done`` counts up."""

    key: Hashable
    images: int
    params: dict[str, Any]
    id: int = 0
    steps_done: int = 0
    future: Future = field(default_factory=Future)


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
    that batch. At most ``max_batch_images`` images go into one batch and at most
    ``max_pending`` images wait.
    """

    def __init__(
        self, run_batch: RunBatch, *, max_batch_images: int = 32, max_pending: int = 64, window_s: float = 0.05
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_images, self.max_pending, self.window_s = max_batch_images, max_pending, window_s
        self.metrics = Metrics()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue but not fitting the current batch
        self._pending = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.jobs: dict[int, Job] = {}
        self._thread = threading.Thread(target=self._work, name="catdiff-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, images: int, params: dict[str, Any]) -> Job:
        with self._lock:
            if self._pending + images > self.max_pending:
                self.metrics.rejected += 1
                raise QueueFull(f"{self._pending} images are waiting (at most {self.max_pending})")
            self._pending += images
            job = Job(key, images, params, id=next(self._ids))
            self.jobs[job.id] = job
            self._forget_old_jobs()
        self._queue.put(job)
        return job

    def _forget_old_jobs(self, keep: int = 1000) -> None:
        for job_id in list(self.jobs)[: max(0, len(self.jobs) - keep)]:
            if self.jobs[job_id].future.done():
                del self.jobs[job_id]

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
                for job, result in zip(batch, results):
                    job.future.set_result(result)
            with self._lock:
                self._pending -= sum(job.images for job in batch)
                self.metrics.batches += 1
                self.metrics.jobs += len(batch)
                self.metrics.batch_sizes = (self.metrics.batch_sizes + [len(batch)])[-1000:]
