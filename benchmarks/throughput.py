"""Memes per second at 1, 8, 32 and 64 concurrent clients, continuous batching on vs off.

    python benchmarks/throughput.py [--models-dir models] [--backend inprocess|grpc] [--seconds 20]
    python benchmarks/throughput.py --backend grpc --workers 1,2   # gateway processes instead

Every client uploads the same image again and again, so template_probs come from the
gateway's cache after the first request and the decoder dominates (5 beams, up to 24
tokens, five memes per request). `memefly serve` runs in its own process, once with
continuous batching and once without (one request's beams per decoder call); the clients
run in this process, on keep-alive connections with prebuilt request bytes
(benchmarks/_http_load.py), so that they take little of the CPU being measured. After two
warm-up rounds the clients start spread over one request's time (as independent clients
would be, not in lock-step), and memes/s counts the memes of the requests that completed
inside the next --seconds.

Target (docs/gateway.md): continuous batching >= 6x the throughput without it at 64 clients.

With --workers, continuous batching at each number of gateway processes (`memefly serve
--workers N`) instead of on against off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _http_load import Connection, count_memes, multipart_request  # noqa: E402
from _servers import default_image, gateway, loopback_serving, percentile  # noqa: E402

from memefly.paths import models_dir as default_models_dir  # noqa: E402

OPTIONS = {"num_beams": "5", "num_return_sequences": "5", "max_length": "24"}
CLIENTS = (1, 8, 32, 64)


async def load(url: str, image: bytes, clients: int, seconds: float) -> tuple[float, float, int]:
    """(memes/s, p50 latency ms, requests) with `clients` concurrent clients for `seconds`."""
    request = multipart_request(url, "/memes", {"image": ("meme.jpg", image, "image/jpeg")}, OPTIONS)
    connections = [Connection(url) for _ in range(clients)]

    async def one(connection: Connection) -> tuple[float, float, int]:
        started = time.perf_counter()
        status, body = await connection.send(request)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        return started, time.perf_counter(), count_memes(body)

    for _ in range(2):  # warm-up rounds: the cache, and the first calls at each batch size
        warmup = await asyncio.gather(*(one(c) for c in connections))
    # Identical requests started together would stay in lock-step forever (same length, same
    # batch), which real clients are not: spread the starts over one request's time.
    spread = max(end - start for start, end, _ in warmup)
    window_start = time.perf_counter() + spread
    window_end = window_start + seconds
    done: list[tuple[float, float, int]] = []

    async def client_loop(index: int, connection: Connection):
        await asyncio.sleep(spread * index / clients)
        while time.perf_counter() < window_end:
            done.append(await one(connection))

    await asyncio.gather(*(client_loop(i, c) for i, c in enumerate(connections)))
    await asyncio.gather(*(c.close() for c in connections))
    inside = [d for d in done if window_start <= d[1] <= window_end]
    memes = sum(n for _, _, n in inside)
    latencies = [1000 * (end - start) for start, end, _ in inside]
    return memes / seconds, percentile(latencies, 50) if latencies else float("nan"), len(inside)


def measure(url: str, image: bytes, seconds: float) -> dict[int, tuple[float, float, int]]:
    return {clients: asyncio.run(load(url, image, clients, seconds)) for clients in CLIENTS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--backend", choices=["inprocess", "grpc"], default="inprocess")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", help="gateway processes to compare, comma-separated (e.g. 1,2)")
    args = parser.parse_args()
    image = default_image()
    results = {}
    workers = [int(n) for n in args.workers.split(",")] if args.workers else None

    def run(target=None):
        if workers:
            for n in workers:
                with gateway(args.backend, args.models_dir, target, workers=n) as url:
                    results[n] = measure(url, image, args.seconds)
            return
        for continuous in (True, False):
            with gateway(args.backend, args.models_dir, target, continuous_batching=str(continuous).lower()) as url:
                results[continuous] = measure(url, image, args.seconds)

    if args.backend == "grpc":
        with loopback_serving(args.models_dir) as target:
            run(target)
    else:
        run()

    print(
        f"throughput, memes/s (5 memes per request; 5 beams, max 24 tokens; cached template_probs); "
        f"backend {args.backend}; {os.cpu_count()} cores; {args.seconds:g} s per cell"
    )
    if workers:
        print(f"{'clients':>7} | " + " | ".join(f"{n} worker(s): memes/s, p50 ms" for n in workers))
        for clients in CLIENTS:
            print(
                f"{clients:7d} | "
                + " | ".join(f"{results[n][clients][0]:10.1f} {results[n][clients][1]:8.0f}" for n in workers)
            )
        return 0
    print(f"{'clients':>7} | {'continuous':>10} {'p50 ms':>8} | {'one at a time':>13} {'p50 ms':>8} | {'speed-up':>8}")
    for clients in CLIENTS:
        on, off = results[True][clients], results[False][clients]
        print(f"{clients:7d} | {on[0]:10.1f} {on[1]:8.0f} | {off[0]:13.1f} {off[1]:8.0f} | {on[0] / off[0]:7.2f}x")
    print("target: >= 6x at 64 clients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
