"""Micro-batching: requests that arrive close together share network evaluations.

A job (one request's images) is cut into pieces that each cost at most half ``max_batch_cost``
(a job's cost is its images times the network evaluations each takes), so that a batch of
cheap jobs still has room for a piece of a costly one. One worker thread picks
a piece to lead the next batch, waits up to ``window_s`` for more pieces with the same sampling
settings, and runs them as one batch (their images side by side), so N concurrent requests cost
about one batch of sampling instead of N. A job is answered when its last piece is done.

Scheduling is shortest job first, which minimises the mean wait on one machine (Smith, 1956):
the piece of the cheapest job leads, so a cheap job waits for the batch running and then its
own, both bounded by ``max_batch_cost``, not for the whole queue nor for a costly job. A piece
that has waited ``patience_s`` leads the next batch whatever its job costs (cheap jobs still
fill the batch first), so costly jobs are never starved. Given ``batch_seconds``, the batch
bound follows the machine: after each batch that came near the bound, it moves half-way to
the cost that would have taken ``batch_seconds``, within half and twice its start, so that the
wait stays about the same on a slow CPU, a fast one, or one shared with other work.

Admission is by cost: the work queued and running is bounded, and a job that would overflow
the bound is refused at once (the web layer answers 503). The last quarter of the bound is kept
for small jobs (those costing at most that quarter), so that costly ones cannot fill the queue
and shut cheap ones out. Finished jobs are kept for polling, bounded by bytes and by age.
"""

from __future__ import annotations

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


@dataclass(eq=False)
class Job:
    """One request: ``images`` images made with ``key``'s settings at ``cost``; ``steps_done`` counts up."""

    key: Hashable
    images: int
    params: dict[str, Any]
    cost: int = 1
    id: str = field(default_factory=job_id)
    steps_done: int = 0
    future: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # time.monotonic() when its first batch began
    finished_at: float | None = None  # time.monotonic() when its result or error was set
    batched_with: int = 1  # the most jobs that shared one of its batches
    size: int = 0  # bytes its result holds
    images_done: int = 0
    parts: dict[int, Any] = field(default_factory=dict)  # results of its finished pieces, by first image


@dataclass(eq=False)
class Piece:
    """Images ``start`` to ``start + images - 1`` of ``job``, sampled in one batch, at ``cost``."""

    job: Job
    start: int
    images: int
    cost: int

    @property
    def key(self) -> Hashable:
        return self.job.key

    def progress(self, step: int, steps: int) -> None:
        """This piece has done ``step`` of ``steps``: its job's ``steps_done`` over all its images."""
        self.job.steps_done = (self.job.images_done * steps + self.images * step) // self.job.images


def cut(job: Job, max_cost: int) -> list[Piece]:
    """``job`` in the fewest runs of near-equal images that each cost at most ``max_cost``
    (or one image, where one costs more); the pieces' costs add up to the job's."""
    per_piece = max(1, max_cost * job.images // max(job.cost, 1))  # images one piece may hold
    count = -(-job.images // per_piece)
    bounds = [job.images * i // count for i in range(count + 1)]
    price = [job.cost * bound // job.images for bound in bounds]
    return [Piece(job, bounds[i], bounds[i + 1] - bounds[i], price[i + 1] - price[i]) for i in range(count)]


RunBatch = Callable[[list[Piece]], list[Any]]
Combine = Callable[[Job, list[Any]], Any]


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

    ``run_batch(pieces)`` returns one result per piece, in order, and ``combine(job, results)``
    makes a job's result of its pieces' (in order; by default, the list of them). An exception
    fails every job of that batch. One batch holds at most ``max_batch_images`` images and
    ``max_batch_cost`` cost (default: ``max_cost``; the start of the bound that follows
    ``batch_seconds``, where given, between half and twice that start), and the jobs waiting or running cost at
    most ``max_cost`` together. Finished jobs are forgotten after ``retain_s`` seconds, or
    sooner, oldest first, while their results (``result_size`` bytes each) hold more than
    ``max_retained_bytes``.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        combine: Combine = lambda job, results: results,
        max_batch_images: int = 32,
        max_batch_cost: int | None = None,
        max_cost: int = 1024,
        window_s: float = 0.05,
        patience_s: float = 4.0,
        batch_seconds: float | None = None,
        result_size: Callable[[Any], int] = lambda result: 0,
        max_retained_bytes: int = 64 * 2**20,
        retain_s: float = 600.0,
    ) -> None:
        self.run_batch, self.combine, self.result_size = run_batch, combine, result_size
        self.max_batch_images, self.max_cost, self.window_s = max_batch_images, max_cost, window_s
        self.max_batch_cost = max_cost if max_batch_cost is None else max_batch_cost
        self.patience_s, self.batch_seconds = patience_s, batch_seconds
        self._first_batch_cost = max(1, self.max_batch_cost)
        self.max_retained_bytes, self.retain_s = max_retained_bytes, retain_s
        self.metrics = Metrics()
        self._waiting: list[Piece] = []  # admitted and not yet in a batch, oldest first
        self._pending_cost = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
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
            self._waiting += cut(job, self.max_batch_cost // 2)  # a batch of small jobs has room for a piece
            self._arrived.notify()
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

    def _lead(self) -> Piece:
        """What the next batch is built around: the oldest piece if it has run out of patience,
        else the first piece of the cheapest job."""
        oldest = self._waiting[0]
        if time.monotonic() - oldest.job.submitted_at >= self.patience_s:
            return oldest
        return min(self._waiting, key=lambda piece: piece.job.cost)  # min keeps the oldest of equals

    def _fill(self, lead: Piece) -> list[Piece]:
        """``lead`` and, cheapest job first, the waiting pieces with its key that fit beside it."""
        batch, images, cost = [lead], lead.images, lead.cost
        for piece in sorted(self._waiting, key=lambda piece: piece.job.cost):  # stable: oldest first among equals
            fits = images + piece.images <= self.max_batch_images and cost + piece.cost <= self.max_batch_cost
            if piece is not lead and piece.key == lead.key and fits:
                batch.append(piece)
                images, cost = images + piece.images, cost + piece.cost
        return batch

    def _gather(self) -> list[Piece]:
        """The next batch: its lead and the pieces that join it within the window, taken off the waiting list."""
        with self._lock:
            while not self._waiting:
                self._arrived.wait()
            lead = self._lead()
            deadline = time.monotonic() + self.window_s
            batch = self._fill(lead)
            while sum(piece.images for piece in batch) < self.max_batch_images and self._arrived.wait(
                max(0.0, deadline - time.monotonic())
            ):
                batch = self._fill(lead)
            for piece in batch:
                self._waiting.remove(piece)
        return batch

    def _finish(self, piece: Piece, result: Any) -> None:
        """Keep ``piece``'s result; the job's result once its last piece is done."""
        job = piece.job
        job.parts[piece.start] = result
        job.images_done += piece.images
        if job.images_done < job.images:
            return
        results, job.parts = [job.parts[start] for start in sorted(job.parts)], {}
        try:
            value = self.combine(job, results)
        except Exception as error:
            job.future.set_exception(error)
        else:
            job.size = self.result_size(value)
            job.future.set_result(value)

    def _follow(self, cost: int, seconds: float) -> None:
        """Move the batch bound half-way to the cost that a batch like this one makes in ``batch_seconds``."""
        if self.batch_seconds is None or seconds <= 0 or 2 * cost < self.max_batch_cost:
            return  # a small batch's time is mostly overhead: it tells little of a full one's
        target = cost * self.batch_seconds / seconds
        low, high = self._first_batch_cost // 2, min(self.max_cost, 2 * self._first_batch_cost)
        self.max_batch_cost = max(low, min(high, round((self.max_batch_cost + target) / 2)))

    def _work(self) -> None:
        while True:
            batch = self._gather()
            began, jobs = time.monotonic(), list(dict.fromkeys(piece.job for piece in batch))
            for job in jobs:
                job.started_at = began if job.started_at is None else job.started_at
                job.batched_with = max(job.batched_with, len(jobs))
            try:
                results = self.run_batch(batch)
            except Exception as error:  # every request of the batch gets the failure
                failed = jobs
                for job in failed:
                    job.future.set_exception(error)
            else:
                failed = []
                for piece, result in zip(batch, results, strict=True):
                    self._finish(piece, result)
            self._follow(sum(piece.cost for piece in batch), time.monotonic() - began)
            with self._lock:
                left = [piece for piece in self._waiting if piece.job in failed]  # never to be run
                self._waiting = [piece for piece in self._waiting if piece not in left]
                self._pending_cost -= sum(piece.cost for piece in batch + left)
                done = [job for job in jobs if job.future.done()]
                for job in done:
                    job.finished_at = time.monotonic()
                self.metrics.batches += 1
                self.metrics.jobs += len(done)
                self.metrics.batch_sizes = (self.metrics.batch_sizes + [len(jobs)])[-1000:]
