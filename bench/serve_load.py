"""The web app under mixed load: cheap requests while expensive ones keep the queue full.

    python bench/serve_load.py --model cats --seconds 60

Starts ``catdiff serve`` as its own process and, for ``--seconds``, keeps ``--expensive``
clients posting the costliest requests the server admits back to back (16 images at the
model's steps, or whatever fits the per-request cap), while ``--cheap`` clients each post a
one-image request at the model's defaults every half second. Prints every status seen, the
p50 / p95 latency of each kind, the server's resident memory before and after (from /proc)
and its batch bound at the start and the end. docs/FAULTS.md holds the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@dataclass
class Kind:
    body: dict
    statuses: Counter = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)  # of the 200 answers

    def figures(self) -> dict:
        ok = sorted(self.seconds)
        p = (lambda q: ok[min(len(ok) - 1, int(q * len(ok)))]) if ok else (lambda q: float("nan"))
        return {
            "body": self.body,
            "statuses": dict(self.statuses),
            "p50_s": p(0.5),
            "p95_s": p(0.95),
            "answered": len(ok),
        }


async def client_loop(http: httpx.AsyncClient, kind: Kind, until: float, pause: float) -> None:
    while time.monotonic() < until:
        began = time.perf_counter()
        reply = await http.post("/api/generate", json=kind.body)
        kind.statuses[reply.status_code] += 1
        if reply.status_code == 200:
            kind.seconds.append(time.perf_counter() - began)
        await asyncio.sleep(pause if reply.status_code == 200 else 0.2)


async def load(url: str, seconds: float, expensive: Kind, cheap: Kind, n_expensive: int, n_cheap: int) -> None:
    until = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        loops = [client_loop(http, expensive, until, 0.0) for _ in range(n_expensive)]
        loops += [client_loop(http, cheap, until, 0.5) for _ in range(n_cheap)]
        await asyncio.gather(*loops)


def measure(model: str, seconds: float, n_expensive: int = 4, n_cheap: int = 4) -> dict:
    """Run the load against a fresh ``catdiff serve --model MODEL``; returns the figures."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "catdiff", "serve", "--model", model, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                info = httpx.get(f"{url}/api/info", timeout=1).json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not start")
        httpx.post(f"{url}/api/generate", json={"seed": 0}, timeout=120)  # warm-up
        before = rss_mb(server.pid)
        steps, cap = info["defaults"]["steps"], info["limits"]["request_cost"]
        guided = 2 if info["guidance"] not in (None, 1.0) else 1
        n = max(1, min(16, cap // (steps * guided + 8)))
        expensive, cheap = Kind({"n": n}), Kind({"n": 1})
        asyncio.run(load(url, seconds, expensive, cheap, n_expensive, n_cheap))
        after = rss_mb(server.pid)
        metrics = httpx.get(f"{url}/api/metrics").json()
    finally:
        server.terminate()
        server.wait(30)
    return {
        "model": model,
        "seconds": seconds,
        "clients": {"expensive": n_expensive, "cheap": n_cheap},
        "limits": info["limits"],
        "expensive": expensive.figures(),
        "cheap": cheap.figures(),
        "rss_mb": {"before": round(before, 1), "after": round(after, 1)},
        "batches": metrics["batches"],
        "largest_batch": metrics["largest_batch"],
        "batch_cost": {"start": info["limits"]["batch_cost"], "end": metrics["batch_cost"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cats")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--expensive", type=int, default=4, help="clients posting costly requests back to back")
    parser.add_argument("--cheap", type=int, default=4, help="clients posting one image every half second")
    args = parser.parse_args()
    figures = measure(args.model, args.seconds, args.expensive, args.cheap)
    print(json.dumps(figures, indent=2))
    print(
        f"cheap: p50 {figures['cheap']['p50_s']:.2f} s, p95 {figures['cheap']['p95_s']:.2f} s;"
        f" expensive: p50 {figures['expensive']['p50_s']:.2f} s, p95 {figures['expensive']['p95_s']:.2f} s;"
        f" statuses cheap {figures['cheap']['statuses']}, expensive {figures['expensive']['statuses']};"
        f" RSS {figures['rss_mb']['before']} -> {figures['rss_mb']['after']} MB;"
        f" batch bound {figures['batch_cost']['start']} -> {figures['batch_cost']['end']}"
    )
    print("cheap p95 within 5 s" if figures["cheap"]["p95_s"] <= 5 else "cheap p95 OVER 5 s")


if __name__ == "__main__":
    main()
