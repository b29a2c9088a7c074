"""Images per second for a folder of images: the batch client straight to TF Serving, against
POST /memes one image at a time, in one run.

    python benchmarks/batch.py [--models-dir models] [--images 200] [--concurrency 64] [--batch-size 32]

The model server is the loopback TF Serving (`memefly loopback`) over MODELS_DIR, in
its own process. Every row makes memes for the same IMAGES distinct images (20 template
images, each varied by a pixel, so no cache helps) with the default options (5 beams, 5
memes, up to 32 tokens), and each row gets a fresh server process:
- "POST /memes, one at a time": `memefly serve` over gRPC to that server, and a client that
  uploads image after image, waiting for each answer (the HTTP round trip per image);
- "batch client (library)": MemePipeline + memefly.cli.batch_run.run_batch in this process,
  writing the JSONL, images batched into encoder calls and beams into decoder calls;
- "memefly batch (command)": the command itself, timed from start to exit, so including
  its start-up (imports, connecting, warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _servers import ROOT, gateway, loopback_serving  # noqa: E402

from gateway.pipeline import MemePipeline  # noqa: E402
from memefly.cli.batch_results import ResultsFile  # noqa: E402
from memefly.cli.batch_run import BatchSummary, run_batch  # noqa: E402
from memefly.decoding.options import DecodingOptions  # noqa: E402
from memefly.paths import models_dir as default_models_dir  # noqa: E402
from memefly.paths import templates_dir  # noqa: E402


def write_images(folder: Path, count: int) -> list[Path]:
    """COUNT distinct JPEGs in FOLDER: template images (or noise, without the dataset), one pixel changed each."""
    sources = sorted(templates_dir().glob("*.jpg"))[:20]
    rng = np.random.default_rng(0)
    bases = [np.asarray(Image.open(p).convert("RGB").resize((400, 400))) for p in sources] or [
        rng.integers(0, 256, (400, 400, 3), dtype=np.uint8) for _ in range(20)
    ]
    paths = []
    for i in range(count):
        pixels = bases[i % len(bases)].copy()
        pixels[0, 0] = [i % 256, (i // 256) % 256, 7]
        path = folder / f"image{i:04d}.jpg"
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def one_at_a_time(url: str, paths: list[Path]) -> float:
    with httpx.Client(base_url=url, timeout=120) as client:
        warm = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(warm, format="JPEG")
        client.post("/memes", files={"image": ("w.jpg", warm.getvalue())}).raise_for_status()
        started = time.perf_counter()
        for path in paths:
            response = client.post("/memes", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
            response.raise_for_status()
            assert len(response.json()["memes"]) == 5
        return time.perf_counter() - started


def library(target: str, paths: list[Path], out: Path, concurrency: int, batch_size: int) -> float:
    async def go() -> float:
        summary = BatchSummary(total=len(paths))
        async with MemePipeline(target, target, encoder_max_batch=batch_size, max_in_flight=concurrency) as client:
            started = time.perf_counter()
            with ResultsFile(out) as results:
                await run_batch(paths, results, client, DecodingOptions(), summary, concurrency=concurrency)
            elapsed = time.perf_counter() - started
        assert summary.written == len(paths) and not summary.errors and not summary.failed, summary.line()
        return elapsed

    return asyncio.run(go())


def command(target: str, folder: Path, out: Path, concurrency: int, batch_size: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "memefly.cli",
            "batch",
            str(folder),
            "--out",
            str(out),
            "--encoder",
            target,
            "--decoder",
            target,
            "--concurrency",
            str(concurrency),
            "--batch-size",
            str(batch_size),
            "--no-progress",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--model-version", default="latest", help="the served pair (default: the newest)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        paths = write_images(folder, args.images)
        with (
            loopback_serving(args.models_dir) as target,
            gateway("grpc", args.models_dir, target, model_version=args.model_version) as url,
        ):
            rows["POST /memes, one at a time"] = one_at_a_time(url, paths)
        with loopback_serving(args.models_dir) as target:
            rows["batch client (library)"] = library(
                target, paths, Path(scratch) / "library.jsonl", args.concurrency, args.batch_size
            )
        with loopback_serving(args.models_dir) as target:
            rows["memefly batch (command)"] = command(
                target, folder, Path(scratch) / "command.jsonl", args.concurrency, args.batch_size
            )

    print(
        f"{args.images} images, 5 beams and 5 memes each; loopback TF Serving over gRPC; "
        f"batch client: --concurrency {args.concurrency} --batch-size {args.batch_size}; "
        f"{os.cpu_count()} cores; models {args.models_dir}"
    )
    print(f"{'':32} {'seconds':>8} {'images/s':>9} {'speed-up':>9}")
    base = rows["POST /memes, one at a time"]
    for name, seconds in rows.items():
        print(f"{name:32} {seconds:8.1f} {args.images / seconds:9.2f} {base / seconds:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
