"""The web app: a page with a Generate button, and a JSON API over one pipeline.

Requests go through a :class:`~catdiff.serve.batcher.MicroBatcher`, so concurrent requests with
the same sampler and step count share network evaluations. Candidate ``j`` of a request with
seed ``s`` is the image of seed ``s + j``: its start noise and every per-step draw come from its
own generator, so a request gives the same images alone, pooled with others, or from
``catdiff generate --seed s``, with every sampler.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from catdiff.diffusion.noise import image_generators
from catdiff.diffusion.samplers import SAMPLERS
from catdiff.errors import UserError
from catdiff.images import to_pil
from catdiff.pipeline import Pipeline, pipeline_folder
from catdiff.rerank import DEFAULT_SCORER, Scorer, load_scorer
from catdiff.serve.batcher import Job, MicroBatcher, QueueFull

STATIC = Path(__file__).parent / "static"
MAX_N, MAX_STEPS, MAX_SEED, MAX_GUIDANCE = 16, 200, 2**32 - 1, 20.0
SamplerName = Literal[tuple(sorted(SAMPLERS))]  # type: ignore[valid-type]


class GenerateRequest(BaseModel):
    """What to make. Leave a field out for the model's default (or, for the seed, a random one)."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed gives the same image")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="sampler steps")
    sampler: SamplerName | None = Field(None, description="sampler name")
    n: int = Field(1, ge=1, le=MAX_N, description="candidates made at once; the best by score comes first")
    guidance: float | None = Field(
        None, ge=0, le=MAX_GUIDANCE, description="autoguidance scale, for a model with a guide network; 1: none"
    )


class Candidate(BaseModel):
    image: str = Field(description="PNG, base64")
    score: float | None = Field(description="the scorer's score (higher is better); null without a scorer")


class GenerateResponse(BaseModel):
    image: str = Field(description="the best candidate, PNG, base64")
    seed: int
    steps: int
    guidance: float | None = Field(description="the autoguidance scale; null for a model without a guide")
    sampler: str
    scores: list[float] | None = Field(description="every candidate's score, best first")
    scorer: str | None
    candidates: list[Candidate] = Field(description="all candidates, best first")
    batched_with: int = Field(description="requests that shared this request's network evaluations")
    seconds: float = Field(description="seconds this request's images took: its batch's sampling, then its scoring")


class JobStatus(BaseModel):
    id: int
    status: Literal["queued", "running", "done", "failed"]
    steps_done: int
    steps: int
    result: GenerateResponse | None = None
    error: str | None = None


def png_base64(image: torch.Tensor) -> str:
    buffer = io.BytesIO()
    to_pil(image[None])[0].save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Generator:
    """Turns batches of jobs into responses: shared sampling, then per-job scoring and encoding."""

    def __init__(self, pipeline: Pipeline, scorer: Scorer | None) -> None:
        self.pipeline, self.scorer = pipeline, scorer

    def __call__(self, jobs: list[Job]) -> list[GenerateResponse]:
        first = jobs[0].params
        seeds = [job.params["seed"] + j for job in jobs for j in range(job.images)]

        def progress(info: dict[str, Any]) -> None:
            for job in jobs:
                job.steps_done = int(info["i"]) + 1

        guidance = first["guidance"]
        condition = None if guidance is None else self.pipeline.autoguidance(guidance)
        began = time.perf_counter()
        images = self.pipeline.sample_batch(
            image_generators(seeds), steps=first["steps"], sampler=first["sampler"], condition=condition,
            callback=progress,
        ).cpu()  # fmt: skip
        responses, start = [], 0
        for job in jobs:
            mine = images[start : start + job.images]
            start += job.images
            responses.append(self._response(job, mine, len(jobs), began))
        return responses

    def _response(self, job: Job, images: torch.Tensor, batched_with: int, began: float) -> GenerateResponse:
        scores = self.scorer(images) if self.scorer is not None else None
        order = scores.argsort(descending=True).tolist() if scores is not None else list(range(len(images)))
        candidates = [
            Candidate(image=png_base64(images[i]), score=None if scores is None else float(scores[i])) for i in order
        ]
        return GenerateResponse(
            image=candidates[0].image,
            seed=job.params["seed"],
            steps=job.params["steps"],
            guidance=job.params["guidance"],
            sampler=job.params["sampler"],
            scores=None if scores is None else [c.score for c in candidates],
            scorer=None if self.scorer is None else self.scorer.name,
            candidates=candidates,
            batched_with=batched_with,
            seconds=time.perf_counter() - began,
        )


def stored_scorer(kind: str | None, folder: Path) -> Scorer | None:
    """The pipeline folder's ``kind`` scorer, or None when there is none or it stores no statistics."""
    try:
        return None if kind is None else load_scorer(kind, pipeline=folder)
    except UserError:
        return None


def create_app(
    model: str | Path = "cats",
    *,
    device: str | torch.device = "cpu",
    scorer: str | None = DEFAULT_SCORER,
    max_batch_images: int = 32,
    max_pending: int = 64,
    window_s: float = 0.05,
) -> FastAPIOffline:
    """The app for one pipeline (a bundled model's name or a pipeline folder), sampled on ``device``;
    candidates are ranked by the folder's ``scorer`` (none if None, or if the folder has no statistics)."""
    folder = pipeline_folder(model)
    pipeline = Pipeline.from_folder(folder, device=device)
    ranker = stored_scorer(scorer, folder)
    batcher = MicroBatcher(
        Generator(pipeline, ranker), max_batch_images=max_batch_images, max_pending=max_pending, window_s=window_s
    )
    app = FastAPIOffline(title="catdiff", description="Make new images with a diffusion model; one click, a new cat.")
    app.state.batcher = batcher
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    guided = pipeline.guide is not None

    def submit(request: GenerateRequest) -> Job:
        if request.guidance is not None:
            try:
                pipeline.autoguidance(request.guidance)  # the library's own refusal of a model without a guide
            except UserError as error:
                raise HTTPException(422, str(error)) from None
        params = {
            "seed": secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed,
            "steps": request.steps or pipeline.sampling["steps"],
            "sampler": request.sampler or pipeline.sampling["sampler"],
            "guidance": (pipeline.guidance if request.guidance is None else request.guidance) if guided else None,
        }
        try:
            return batcher.submit((params["steps"], params["sampler"], params["guidance"]), request.n, params)
        except QueueFull as error:
            raise HTTPException(503, f"busy: {error}; retry shortly", headers={"Retry-After": "1"}) from None

    def status(job: Job) -> JobStatus:
        done = job.future.done()
        error = job.future.exception() if done else None
        state = "failed" if error else "done" if done else "running" if job.steps_done else "queued"
        return JobStatus(
            id=job.id,
            status=state,
            steps_done=job.steps_done,
            steps=job.params["steps"],
            result=job.future.result() if done and not error else None,
            error=None if error is None else str(error),
        )

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """The model's defaults and the limits of the API."""
        return {
            "model": str(model),
            "defaults": pipeline.sampling,
            "samplers": sorted(SAMPLERS),
            "scorer": None if ranker is None else ranker.name,
            "guidance": pipeline.guidance if guided else None,
            "limits": {"n": MAX_N, "steps": MAX_STEPS, "seed": MAX_SEED, "guidance": MAX_GUIDANCE},
        }

    @app.post("/api/generate", response_model=GenerateResponse)
    async def generate(request: GenerateRequest) -> GenerateResponse:
        """Make ``n`` candidates and return them best first, waiting for the result."""
        return await asyncio.wrap_future(submit(request).future)

    @app.post("/api/jobs", response_model=JobStatus, status_code=202)
    def start_job(request: GenerateRequest) -> JobStatus:
        """Start a generation; poll ``GET /api/jobs/{id}`` for progress and the result."""
        return status(submit(request))

    @app.get("/api/jobs/{job_id}", response_model=JobStatus)
    def job_status(job_id: int) -> JobStatus:
        job = batcher.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return status(job)

    @app.get("/api/metrics")
    def metrics() -> dict[str, Any]:
        """Batches run, requests served and refused, and how many requests shared each batch."""
        return batcher.metrics.as_dict()

    return app
