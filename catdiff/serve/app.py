"""The web app: a page with a Generate button, and a JSON API over one pipeline.

Requests go through a :class:`~catdiff.serve.batcher.MicroBatcher`, so concurrent requests with
the same sampler and step count share network evaluations. Candidate ``j`` of a request with
seed ``s`` is the image of seed ``s + j``: its start noise and every per-step draw come from its
own generator, so a request gives the same images alone, pooled with others, or from
``catdiff generate --seed s``, with every sampler.

What a caller cannot do (docs/FAULTS.md): make the server parse a large body (413), pass a
string or boolean for a number (strict request models; every 422 body is valid JSON), read
another caller's job (ids of 96 random bits), reach a server bound to this machine through
another host name (DNS rebinding), learn its paths, or hold the queue with costly requests:
each request costs its images times their network evaluations, one request may cost
``max_request_cost`` at most and all the queued work ``max_cost``; requests are sampled in
batches of cost ``max_batch_cost`` at most (a costly one in several), cheapest first, so a
cheap request waits for one batch and its own. By default that bound is what this machine
samples in about ``BATCH_SECONDS``: timed at start (:func:`calibrated_batch_cost`), then
followed batch by batch.
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
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catdiff.diffusion.noise import image_generators
from catdiff.diffusion.samplers import EVALUATIONS_PER_STEP, SAMPLERS
from catdiff.errors import UserError
from catdiff.images import to_pil
from catdiff.pipeline import BUNDLED_PIPELINES, MAX_GUIDANCE, Pipeline, pipeline_folder
from catdiff.rerank import DEFAULT_SCORER, Scorer, load_scorer
from catdiff.serve.batcher import Job, MicroBatcher, Piece, QueueFull, cut

STATIC = Path(__file__).parent / "static"
MAX_N, MAX_STEPS, MAX_SEED = 16, 200, 2**32 - 1
MAX_BODY_BYTES = 16 * 1024  # a request is a few short fields
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Costs are images x network evaluations. Decoding an image with TAESD takes about as long as
# 8 evaluations of the bundled denoiser for it. On 2 CPU cores the server makes about 300 such
# units a second, so the queue bound is about 2.5 s of work (docs/FAULTS.md, bench/serve_load.py).
DECODE_COST = 8
MAX_COST = 768
MAX_REQUEST_COST = 384
BATCH_SECONDS = 1.5  # a cheap request waits for about one batch before its own
SamplerName = Literal[tuple(sorted(SAMPLERS))]  # type: ignore[valid-type]


class GenerateRequest(BaseModel):
    """What to make. Leave a field out for the model's default (or, for the seed, a random one).
    Strict: numbers must be JSON numbers (whole ones where a whole one is asked for)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed gives the same image")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="sampler steps")
    sampler: SamplerName | None = Field(None, description="sampler name")
    n: int = Field(1, ge=1, le=MAX_N, description="candidates made at once; the best by score comes first")
    guidance: float | None = Field(
        None,
        ge=0,
        le=MAX_GUIDANCE,
        allow_inf_nan=False,
        description="autoguidance scale, for a model with a guide network; 1: none",
    )


def cost(n: int, steps: int, sampler: str, guidance: float | None) -> int:
    """What ``n`` images cost: their network evaluations (twice over where guided), and decoding."""
    evaluations = steps * EVALUATIONS_PER_STEP[sampler] * (1 if guidance in (None, 1.0) else 2)
    return n * (evaluations + DECODE_COST)


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
    id: str
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
    """Samples batches of pieces of jobs together, then scores and encodes each job's images."""

    def __init__(self, pipeline: Pipeline, scorer: Scorer | None) -> None:
        self.pipeline, self.scorer = pipeline, scorer

    def sample(self, pieces: list[Piece]) -> list[torch.Tensor]:
        """The images of ``pieces``, sampled as one batch: image ``j`` of a job is that of its seed + ``j``."""
        first = pieces[0].job.params
        seeds = [piece.job.params["seed"] + piece.start + j for piece in pieces for j in range(piece.images)]

        def progress(info: dict[str, Any]) -> None:
            for piece in pieces:
                piece.progress(int(info["i"]) + 1, first["steps"])

        guidance = first["guidance"]
        condition = None if guidance is None else self.pipeline.autoguidance(guidance)
        images = self.pipeline.sample_batch(
            image_generators(seeds), steps=first["steps"], sampler=first["sampler"], condition=condition,
            callback=progress,
        ).cpu()  # fmt: skip
        return list(images.split([piece.images for piece in pieces]))

    def respond(self, job: Job, parts: list[torch.Tensor]) -> GenerateResponse:
        """``job``'s answer: its images (its pieces' in order) ranked by the scorer, as PNGs."""
        images = torch.cat(parts)
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
            batched_with=job.batched_with,
            seconds=time.monotonic() - (job.started_at or time.monotonic()),
        )


def calibrated_batch_cost(generator: Generator, params: dict[str, Any], seconds: float) -> int:
    """The cost of a batch of requests with ``params`` that this machine samples in about
    ``seconds``: one batch is timed (which warms the server up too) and scaled, at least one image."""
    per_image = cost(1, params["steps"], params["sampler"], params["guidance"])
    images = max(1, MAX_REQUEST_COST // per_image)
    generator.sample(cut(Job("warm-up", 1, params), per_image))  # first calls are slow
    began = time.perf_counter()
    generator.sample(cut(Job("calibration", images, params), images * per_image))
    taken = time.perf_counter() - began
    return max(per_image, int(images * per_image * seconds / taken))


def stored_scorer(kind: str | None, folder: Path) -> Scorer | None:
    """The pipeline folder's ``kind`` scorer, or None when there is none or it stores no statistics."""
    try:
        return None if kind is None else load_scorer(kind, pipeline=folder)
    except UserError:
        return None


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 without being parsed,
    whether its Content-Length says so up front or its chunks add up to it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self.refuse(scope, receive, send)
        seen, refused = 0, False

        async def limited() -> Message:  # the app reads the body through this
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                await self.refuse(scope, receive, send)
                return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, unless_refused)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def validation_error(request: Request, error: Exception) -> JSONResponse:
    """A 422 whose body is always valid JSON: what was wrong and where, without echoing the input
    (which may be NaN, an infinity or megabytes)."""
    assert isinstance(error, RequestValidationError)
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def model_name(model: str | Path) -> str:
    """How the API names the model: a bundled name, or a folder's name (never a path of the server's)."""
    return str(model) if str(model) in BUNDLED_PIPELINES else Path(model).resolve().name


def create_app(
    model: str | Path = "cats",
    *,
    device: str | torch.device = "cpu",
    scorer: str | None = DEFAULT_SCORER,
    max_batch_images: int = 32,
    max_cost: int = MAX_COST,
    max_request_cost: int = MAX_REQUEST_COST,
    max_batch_cost: int | None = None,
    window_s: float = 0.05,
    host: str | None = None,
) -> FastAPIOffline:
    """The app for one pipeline (a bundled model's name or a pipeline folder), sampled on ``device``;
    candidates are ranked by the folder's ``scorer`` (none if None, or if the folder has no statistics).
    ``max_cost`` bounds the work queued, ``max_request_cost`` that of one request and
    ``max_batch_cost`` that of one batch of sampling (:func:`cost`; by default what this
    machine samples in ``BATCH_SECONDS``, followed as it runs); bound to a loopback ``host``,
    the app answers only requests addressed to this machine by name."""
    folder = pipeline_folder(model)
    pipeline = Pipeline.from_folder(folder, device=device)
    ranker = stored_scorer(scorer, folder)
    generator = Generator(pipeline, ranker)
    guided = pipeline.guide is not None

    def settings(request: GenerateRequest) -> dict[str, Any]:
        """The request's seed and sampling settings, the model's defaults where it leaves them out."""
        return {
            "seed": secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed,
            "steps": request.steps or pipeline.sampling["steps"],
            "sampler": request.sampler or pipeline.sampling["sampler"],
            "guidance": (pipeline.guidance if request.guidance is None else request.guidance) if guided else None,
        }

    follow = max_batch_cost is None  # the bound then follows the batches' times
    if max_batch_cost is None:
        max_batch_cost = calibrated_batch_cost(generator, settings(GenerateRequest(seed=0)), BATCH_SECONDS)
    batcher = MicroBatcher(
        generator.sample,
        combine=generator.respond,
        max_batch_images=max_batch_images,
        max_batch_cost=min(max_batch_cost, max_cost),
        batch_seconds=BATCH_SECONDS if follow else None,
        max_cost=max_cost,
        window_s=window_s,
        result_size=lambda response: sum(len(c.image) for c in response.candidates),
    )
    app = FastAPIOffline(title="catdiff", description="Make new images with a diffusion model; one click, a new cat.")
    app.state.batcher = batcher
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    if host in LOOPBACK:  # a page elsewhere cannot reach it through a name that resolves here
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK, "[::1]"])
    request_cap = min(max_request_cost, max_cost)

    def submit(request: GenerateRequest) -> Job:
        if request.guidance is not None:
            try:
                pipeline.autoguidance(request.guidance)  # the library's own refusal of a model without a guide
            except UserError as error:
                raise HTTPException(422, str(error)) from None
        params = settings(request)
        price = cost(request.n, params["steps"], params["sampler"], params["guidance"])
        if price > request_cap:
            raise HTTPException(
                422,
                f"this request costs {price} (images x network evaluations); one may cost at most {request_cap}:"
                " ask for fewer images or steps",
            )
        key = (params["steps"], params["sampler"], params["guidance"])
        try:
            return batcher.submit(key, request.n, params, cost=price)
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
            "model": model_name(model),
            "defaults": pipeline.sampling,
            "samplers": sorted(SAMPLERS),
            "scorer": None if ranker is None else ranker.name,
            "guidance": pipeline.guidance if guided else None,
            "limits": {
                "n": MAX_N,
                "steps": MAX_STEPS,
                "seed": MAX_SEED,
                "guidance": MAX_GUIDANCE,
                "request_cost": request_cap,
                "batch_cost": batcher.max_batch_cost,
                "queued_cost": max_cost,
            },
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
    def job_status(job_id: str) -> JobStatus:
        job = batcher.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (or it finished long ago)")
        return status(job)

    @app.get("/api/metrics")
    def metrics() -> dict[str, Any]:
        """Batches run, requests served and refused, how many requests shared each batch, the cost
        queued and the batch bound now."""
        return {**batcher.metrics.as_dict(), "queued_cost": batcher.pending_cost, "batch_cost": batcher.max_batch_cost}

    return app
