"""Start the loopback TF Serving and `memefly serve` as separate processes, as in production.

The benchmark client runs in its own process, so its work is not counted as the gateway's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**settings) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.update({f"MEMEFLY_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextmanager
def loopback_serving(models_dir: Path, *, code: Path = ROOT, port: int | None = None):
    """`memefly loopback` over MODELS_DIR: TF Serving's PredictionService, in Python.
    CODE: the checkout whose loopback server runs (benchmarks/reliability.py measures an older
    one; before it was a module of the package, it was tests/loopback_serving.py)."""
    port = port or free_port()
    module = code / "model_export" / "loopback_serving.py"
    script = (
        ["-m", "model_export.loopback_serving"] if module.exists() else [str(code / "tests" / "loopback_serving.py")]
    )
    process = subprocess.Popen(
        [sys.executable, *script, "--models-dir", str(models_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
        cwd=code,
    )
    try:
        for line in process.stdout:
            if line.startswith("listening on"):
                break
        else:
            raise RuntimeError("the loopback server exited")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def gateway_process(
    backend: str, models_dir: Path, target: str | None = None, *, code: Path = ROOT, log: Path | None = None, **settings
):
    """`memefly serve` of the checkout CODE with BACKEND; yields (URL, process) once /readyz says ready."""
    port = free_port()
    env = _env(backend=backend, models_dir=models_dir, **settings)
    env["PYTHONPATH"] = str(code)
    if target:
        env.update(MEMEFLY_ENCODER_TARGET=target, MEMEFLY_DECODER_TARGET=target)
    output = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memefly.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "info" if log else "warning",
        ],
        env=env,
        cwd=code,
        stdout=output,
        stderr=output,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"memefly serve exited with {process.returncode}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("memefly serve did not become ready")
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(60)
        if log:
            output.close()


@contextmanager
def gateway(backend: str, models_dir: Path, target: str | None = None, **settings):
    """`memefly serve` with BACKEND; yields its URL once /readyz says ready."""
    with gateway_process(backend, models_dir, target, **settings) as (url, _):
        yield url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def default_image() -> bytes:
    """A real template image if the dataset is here, else a generated picture of similar size."""
    sys.path.insert(0, str(ROOT))
    from memefly.paths import dataset_dir

    found = sorted((dataset_dir() / "dataset" / "templates" / "img").glob("*.jpg"))
    if found:
        return found[0].read_bytes()
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
