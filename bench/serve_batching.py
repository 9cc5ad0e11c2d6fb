"""Micro-batching in the web app: 1 request alone, then 8 at once, wall time of each.

    python bench/serve_batching.py --model cats --concurrent 8

Starts `catdiff serve`'s app on a local port in this process, warms it up, and prints the
ratio of the 8 concurrent requests' total wall time to one request's: 8 would mean no sharing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time

import httpx
import uvicorn

from catdiff.serve import create_app


def start(model: str) -> tuple[str, object]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(model)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", app


async def timed(url: str, count: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        began = time.perf_counter()
        replies = await asyncio.gather(*[client.post("/api/generate", json={"seed": i}) for i in range(count)])
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    url, app = start(args.model)
    asyncio.run(timed(url, 1))  # warm-up
    single = min(asyncio.run(timed(url, 1)) for _ in range(2))
    together = asyncio.run(timed(url, args.concurrent))
    metrics = httpx.get(f"{url}/api/metrics").json()
    print(f"1 request: {single:.2f} s; {args.concurrent} concurrent requests: {together:.2f} s in all")
    print(
        f"ratio {together / single:.2f} (no sharing: {args.concurrent}); largest shared batch {metrics['largest_batch']}"
    )


if __name__ == "__main__":
    main()
