"""``catdiff serve``: the web app."""

from __future__ import annotations

import argparse

from catdiff.cli.options import add_device_option, positive_int
from catdiff.rerank import DEFAULT_SCORER, STORED_SCORERS


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the web app: a Generate button and a JSON API",
        description="Serve a page with a Generate button and the JSON API (POST /api/generate; docs at /docs).",
    )
    p.add_argument(
        "--model",
        default="cats",
        help="a bundled model's name (cats, digits), a pipeline folder or a run folder of `catdiff train`"
        " (newest checkpoint; default: cats)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=positive_int, default=32, help="images per shared batch, at most")
    p.add_argument(
        "--max-cost",
        type=positive_int,
        help="work queued and running, at most, in images x network evaluations, then 503 (default 768: about"
        " 2.5 s of work on 2 CPU cores)",
    )
    p.add_argument("--max-request-cost", type=positive_int, help="what one request may cost, at most (default 384)")
    p.add_argument(
        "--max-batch-cost",
        type=positive_int,
        help="what one batch of sampling may cost, at most; a costlier request is sampled in pieces (default: what"
        " this machine samples in about 1.5 s, timed at start)",
    )
    p.add_argument(
        "--scorer", choices=(*STORED_SCORERS, "none"), default=DEFAULT_SCORER, help="how candidates are ranked"
    )
    add_device_option(p, "sample on")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from catdiff.pipeline import PIPELINE_FILE, pipeline_folder
    from catdiff.serve import create_app

    scorer = None if args.scorer == "none" else args.scorer
    if scorer is not None and not (pipeline_folder(args.model) / PIPELINE_FILE).is_file():
        print(f"{args.model} is not a pipeline folder: no scorer statistics, candidates are not ranked", flush=True)
    limits = {
        "max_cost": args.max_cost,
        "max_request_cost": args.max_request_cost,
        "max_batch_cost": args.max_batch_cost,
    }
    app = create_app(
        args.model,
        device=args.device,
        scorer=scorer,
        max_batch_images=args.max_batch,
        host=args.host,
        **{name: value for name, value in limits.items() if value is not None},
    )
    batch_cost = app.state.batcher.max_batch_cost
    print(
        f"serving {args.model} on http://{args.host}:{args.port}/ ({args.device}; batches cost {batch_cost} at most)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
