"""End-to-end latency for one image, next to the raw model time of the same work, in one run.

    python benchmarks/latency.py [--models-dir models] [--trials 50]

The work: one upload (never cached: every trial's image differs by a pixel), 5 beams,
exactly 24 tokens (min_length = max_length = 24, so every run makes the same calls:
the encoder on one image, `init`, one step of 1 row, 24 steps of 5 rows).
"Raw model" makes exactly those calls and nothing else: in-process through the loaded
SavedModels' signatures, and over gRPC to the loopback TF Serving with plain stubs.
"Gateway" is `memefly serve` in its own process, timed by an HTTP client in this one.
"Gateway without HTTP" is the same pipeline as a library (gateway.pipeline.MemePipeline,
in-process) in this very process, beside the raw model's calls: the gateway's own work,
apart from the HTTP hop and a second process on the same cores.
All run side by side, one image through each in turn (see `interleaved`).

Targets (docs/gateway.md): gateway overhead <= 10% of the raw model time;
gateway over gRPC <= 1.2x the gateway in-process.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _servers import default_image, gateway, loopback_serving, percentile  # noqa: E402

from memefly import contract as c  # noqa: E402
from memefly.paths import models_dir as default_models_dir  # noqa: E402

BEAMS, TOKENS = 5, 24
OPTIONS = {"num_beams": BEAMS, "num_return_sequences": BEAMS, "max_length": TOKENS, "min_length": TOKENS}


def variants(image: bytes, n: int) -> list[bytes]:
    """n JPEGs that differ in one pixel: different SHA-256, so the template cache never helps."""
    base = np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).copy()
    out = []
    for i in range(n):
        pixels = base.copy()
        pixels[0, 0] = [(i * 37) % 256, (i * 91) % 256, i % 256]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def model_calls(call, image: bytes) -> None:
    """The calls one request makes: encode, init, then 1 + TOKENS steps (the last one ends every beam)."""
    probs = call(c.ENCODER_MODEL, c.ENCODER_BYTES_SIGNATURE, {c.IMAGE_BYTES: np.array([image], dtype=object)})[
        c.TEMPLATE_PROBS
    ]
    out = call(c.DECODER_MODEL, c.INIT_SIGNATURE, {c.TEMPLATE_PROBS: probs.astype(np.float32)})
    state, context = out[c.STATE], out[c.CONTEXT]
    tokens = np.array([c.START_ID], np.int32)
    for step in range(TOKENS + 1):
        out = call(c.DECODER_MODEL, c.STEP_SIGNATURE, {c.TOKEN: tokens, c.STATE: state, c.CONTEXT: context})
        if step == 0:  # one <start> beam fans out to BEAMS
            state, context = np.repeat(out[c.STATE], BEAMS, 0), np.repeat(context, BEAMS, 0)
            tokens = out[c.TOP_IDS][0, :BEAMS].astype(np.int32)
        else:
            state, tokens = out[c.STATE], out[c.TOP_IDS][:, 0].astype(np.int32)


def newest_pair(models: Path) -> int:
    """The newest version both models have (what the gateways serve with --model-version latest)."""
    versions = [
        {int(p.name) for p in (models / name).iterdir() if p.name.isdigit()}
        for name in (c.ENCODER_MODEL, c.DECODER_MODEL)
    ]
    return max(set.intersection(*versions))


def inprocess_caller(models: Path, version: int):
    import tensorflow as tf

    loaded = {
        name: tf.saved_model.load(str(models / name / str(version))) for name in (c.ENCODER_MODEL, c.DECODER_MODEL)
    }

    def call(model, signature, inputs):
        result = loaded[model].signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    return call, loaded


def grpc_caller(target: str, version: int):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from gateway.backends.tensors import from_proto, to_proto

    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def call(model, signature, inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = model, signature
        request.model_spec.version.value = version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(to_proto(value))
        return {k: from_proto(v) for k, v in stub.Predict(request, timeout=30).outputs.items()}

    return call


def interleaved(runners: dict, images: list[bytes], warmup: int) -> dict[str, list[float]]:
    """Each image through every runner in turn, the order rotating from image to image, so a
    slower or faster spell of the machine falls on all four rows alike (run one row after
    the other, the rows differed by up to 40% between runs on this 2-core machine)."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, image in enumerate(images):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            runners[name](image)
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - started))
    return times


def gateway_poster(client: httpx.Client):
    def post(image):
        response = client.post(
            "/memes", files={"image": ("meme.jpg", image, "image/jpeg")}, data={k: str(v) for k, v in OPTIONS.items()}
        )
        response.raise_for_status()
        assert len(response.json()["memes"]) == BEAMS

    return post


def pipeline_runner(models: Path, version: int):
    """The gateway's pipeline without HTTP, in this process: (run one image, close)."""
    import asyncio

    from gateway.pipeline import Item, MemePipeline
    from memefly.decoding.options import DecodingOptions

    loop = asyncio.new_event_loop()
    pipeline = MemePipeline(models_dir=models, model_version=version)
    loop.run_until_complete(pipeline.__aenter__())
    options = DecodingOptions(**OPTIONS)

    def run(image):
        (result,) = loop.run_until_complete(pipeline.generate([Item("meme.jpg", image=image)], options))
        assert result.response is not None and len(result.response.memes) == BEAMS, result.error

    def close():
        loop.run_until_complete(pipeline.__aexit__(None, None, None))
        loop.close()

    return run, close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--model-version", default="latest", help="the served pair (default: the newest)")
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    warmup = 3
    version = newest_pair(args.models_dir) if args.model_version == "latest" else int(args.model_version)
    # Every image is new to every runner: each gateway caches by SHA-256, but in its own process.
    images = variants(default_image(), args.trials + warmup)
    with (
        loopback_serving(args.models_dir) as target,
        gateway("inprocess", args.models_dir, model_version=version) as inprocess_url,
        gateway("grpc", args.models_dir, target, model_version=version) as grpc_url,
        httpx.Client(base_url=inprocess_url, timeout=120) as inprocess_client,
        httpx.Client(base_url=grpc_url, timeout=120) as grpc_client,
    ):
        raw_inprocess, _ = inprocess_caller(args.models_dir, version)
        raw_grpc = grpc_caller(target, version)
        without_http, close = pipeline_runner(args.models_dir, version)
        rows = interleaved(
            {
                "raw model, in-process": lambda im: model_calls(raw_inprocess, im),
                "gateway, in-process": gateway_poster(inprocess_client),
                "gateway without HTTP": without_http,
                "raw model, gRPC": lambda im: model_calls(raw_grpc, im),
                "gateway, gRPC": gateway_poster(grpc_client),
            },
            images,
            warmup,
        )
        close()

    p = {name: (percentile(t, 50), percentile(t, 95)) for name, t in rows.items()}
    print(
        f"latency of one image: {BEAMS} beams, {TOKENS} tokens; {args.trials} trials each; "
        f"{os.cpu_count()} cores; models {args.models_dir}"
    )
    print(f"{'':24} {'p50 ms':>8} {'p95 ms':>8}")
    for name in rows:
        print(f"{name:24} {p[name][0]:8.1f} {p[name][1]:8.1f}")
    for transport in ("in-process", "gRPC"):
        raw, gw = p[f"raw model, {transport}"][0], p[f"gateway, {transport}"][0]
        print(
            f"gateway overhead, {transport}: {gw - raw:+.1f} ms = {100 * (gw - raw) / raw:+.1f}% of raw model time "
            "(target <= 10%)"
        )
    raw, own = p["raw model, in-process"][0], p["gateway without HTTP"][0]
    print(
        f"the gateway's own work (in one process, no HTTP): {own - raw:+.1f} ms = {100 * (own - raw) / raw:+.1f}% "
        "of raw model time"
    )
    ratio = p["gateway, gRPC"][0] / p["gateway, in-process"][0]
    print(f"gateway gRPC / in-process (p50): {ratio:.2f}x (target <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
