"""The gateway's own ceiling: how many decoding row-steps per second it can feed a decoder that
costs nothing, and what share of the time it takes beside the real model.

    python benchmarks/ceiling.py [--models-dir models] [--seconds 5] [--clients 8,64,256]
                                 [--code DIR ...] [--json FILE]

The real MemeService, scheduler and searches run in this process (the in-process path, as
`memefly generate` and a one-process `memefly serve` use them), with cached conditioning:
every client asks again and again for memes of one template, so the encoder is not called.
Two decoders:
- **instant**: the outputs of one real 1,024-row decoder step, recorded at start and
  sliced to each call's rows (tiled past 1,024), answered without computing anything.
  What is left is the gateway: scheduling, the searches' bookkeeping, constraints.
- **model**: the real in-process decoder step, for the gateway's share of the wall time
  (everything but the step calls).
- **instant-grpc**: the instant step over the gateway's real gRPC path
  (benchmarks/_instant_serving.py answers the step at once and passes the other calls on
  to the loopback model server): building and reading the tensors, serialisation, the
  channel. Its microseconds per row-step are the whole wall time per row-step.
Options: beam search with 5 beams and up to 24 tokens (issue 16's measurement), and the
default strategy (16 sampled candidates).

Prints, per decoder, options and number of concurrent clients: memes/s, row-steps/s (rows
summed over the decoder calls), rows per call, and the gateway's microseconds per row-step
(wall time / row-steps: the event loop is one thread, so this is its CPU per row-step).
With --code DIR (a checkout of another commit, e.g. a `git worktree`), runs the same
measurement on that code too, in its own process, and prints the commits side by side.

Also prints the gRPC wire cost of one 1,024-row step on the gateway's side: building the
PredictRequest (tensors as `tensor_content` bytes) and serialising it, then parsing a
PredictResponse of the step's outputs and reading its tensors, as gateway/backends/grpc_backend.py does.

Target (issue 16): at 256 clients, at most a tenth of the commit before's microseconds per
row-step; beside the real model at 64 clients, the gateway's share at most 15%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = Path(os.environ.get("MEMEFLY_BENCH_CODE", ROOT))  # whose gateway is measured
sys.path.insert(0, str(CODE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

OPTION_SETS = {
    "beams": {"num_beams": 5, "num_return_sequences": 5, "max_length": 24},
    "default": {},
}
RECORDED_ROWS = 1024


def _gateway_module(name: str, before: str):
    """The measured checkout's module NAME, or BEFORE in a checkout from before the gateway was
    grouped into folders (the commit before issue 16's work is measured too). By file: a module
    missing from the checkout would be imported from this project's editable install instead."""
    import importlib

    return importlib.import_module(name if (CODE / (name.replace(".", "/") + ".py")).exists() else before)


def _pipeline_class():
    module = _gateway_module("gateway.pipeline", "gateway.client")
    return getattr(module, "MemePipeline", None) or module.MemeflyClient


def _commit(code: Path) -> str:
    """The checkout's commit, with "+" when its tracked files have changes not committed."""
    result = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(["git", "-C", str(code), "diff", "--quiet", "HEAD"]).returncode == 1
    return (result.stdout.strip() or str(code)) + ("+" if changed else "")


async def _record_step(service, template: str) -> tuple[dict, dict]:
    """One real 1,024-row step of the template's rows, each fed another (seeded) word, so that
    the rows' candidates differ as in a real search: (inputs, outputs), by the contract's names."""
    import numpy as np

    from memefly import contract as c
    from memefly.decoding.captioner import template_input_key

    template_id = service.template_id(template)
    conditioning = await service._conditioning(template_input_key(template_id), probs=service._one_hot(template_id))
    tokens = np.random.default_rng(0).integers(5, len(service.vocabulary), RECORDED_ROWS).astype(np.int32)
    state = np.repeat(np.asarray(conditioning.state, np.float32).reshape(1, -1), RECORDED_ROWS, axis=0)
    context = np.repeat(np.asarray(conditioning.context, np.float32).reshape(1, -1), RECORDED_ROWS, axis=0)
    outputs = await service.models.step(tokens, state, context)
    return (
        {c.TOKEN: tokens, c.STATE: state, c.CONTEXT: context},
        dict(zip((c.TOP_IDS, c.TOP_LOG_PROBS, c.STATE), outputs, strict=True)),
    )


def _instant(outputs: dict):
    """A decoder step that answers at once with the recorded OUTPUTS, tiled to the call's rows."""
    import numpy as np

    from memefly import contract as c

    top_ids, log_probs, state = outputs[c.TOP_IDS], outputs[c.TOP_LOG_PROBS], outputs[c.STATE]

    async def step(tokens, _state, _context):
        take = np.arange(len(tokens)) % RECORDED_ROWS
        return top_ids[take], log_probs[take], state[take]

    return step


class CountedStep:
    """A decoder step that counts its calls, rows and seconds (what _load reports)."""

    def __init__(self, step):
        self.step = step
        self.reset()

    def reset(self) -> None:
        self.rows, self.calls, self.seconds = 0, 0, 0.0

    async def __call__(self, tokens, state, context):
        started = time.perf_counter()
        try:
            return await self.step(tokens, state, context)
        finally:
            self.seconds += time.perf_counter() - started
            self.rows += len(tokens)
            self.calls += 1


def wire_us(inputs: dict, outputs: dict, repeats: int = 50) -> dict:
    """Gateway-side microseconds to encode one step's request and decode its response."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    tensors = _gateway_module("gateway.backends.tensors", "gateway.tensors")
    from_proto, to_proto = tensors.from_proto, tensors.to_proto

    reply = predict_pb2.PredictResponse()
    for name, value in outputs.items():
        reply.outputs[name].CopyFrom(to_proto(value))
    reply_bytes = reply.SerializeToString()

    def encode() -> bytes:
        request = predict_pb2.PredictRequest()
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(to_proto(value))
        return request.SerializeToString()

    def decode() -> dict:
        response = predict_pb2.PredictResponse.FromString(reply_bytes)
        return {name: from_proto(proto) for name, proto in response.outputs.items()}

    timings = {}
    for name, work in (("encode", encode), ("decode", decode)):
        work()
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        timings[name] = 1e6 * (time.perf_counter() - started) / repeats
    timings["request_bytes"] = len(encode())
    timings["response_bytes"] = len(reply_bytes)
    assert all(np.array_equal(decode()[k], v) for k, v in outputs.items())
    return timings


async def _load(service, template: str, options, clients: int, seconds: float, step: CountedStep) -> dict:
    """CLIENTS loops asking for memes of TEMPLATE for SECONDS (after one warm-up round); STEP is
    the service's decoder step."""
    await asyncio.gather(*(service.memes(None, template, options) for _ in range(clients)))
    step.reset()
    memes = 0
    started = time.perf_counter()
    end = started + seconds
    cpu = time.process_time()

    async def client() -> None:
        nonlocal memes
        while time.perf_counter() < end:
            result = await service.memes(None, template, options)
            memes += len(result.memes)

    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    rows = max(1, step.rows)
    return {
        "memes_per_s": memes / wall,
        "row_steps_per_s": step.rows / wall,
        "rows_per_call": step.rows / max(1, step.calls),
        "us_per_row_step": 1e6 * (wall - step.seconds) / rows,
        "cpu_us_per_row_step": 1e6 * cpu / rows,
        "gateway_share": 1 - step.seconds / wall,
    }


async def measure(models_dir: Path, seconds: float, clients: list[int]) -> dict:
    from memefly.decoding.options import DecodingOptions

    MemePipeline = _pipeline_class()
    results = {"commit": _commit(CODE), "runs": []}
    async with MemePipeline(models_dir=models_dir, max_in_flight=max(clients)) as client:
        service = client.service
        template = service.templates[0].name
        real_step = service.scheduler.step
        inputs, outputs = await _record_step(service, template)
        results["wire"] = wire_us(inputs, outputs)
        print(
            f"  {results['commit']} wire, 1,024-row step: "
            + ", ".join(f"{k} {v:.0f}" for k, v in results["wire"].items()),
            file=sys.stderr,
            flush=True,
        )
        for decoder, step in {"instant": _instant(outputs), "model": real_step}.items():
            counted = service.scheduler.step = CountedStep(step)
            for name, values in OPTION_SETS.items():
                options = DecodingOptions(**values)
                for n in clients:
                    if decoder == "model" and n != 64:
                        continue  # beside the model: the 64 clients (the model dominates the rest)
                    row = await _load(service, template, options, n, seconds, counted)
                    row.update(decoder=decoder, options=name, clients=n)
                    _report(results, row)
    await _measure_grpc(models_dir, seconds, clients, outputs, results)
    return results


def _report(results: dict, row: dict) -> None:
    results["runs"].append(row)
    print(
        f"  {results['commit']} {row['decoder']:12s} {row['options']:7s} {row['clients']:4d} clients: "
        f"{row['memes_per_s']:8.0f} memes/s {row['row_steps_per_s']:9.0f} row-steps/s {row['rows_per_call']:6.0f} "
        f"rows/call {row['us_per_row_step']:6.2f} us/row-step, gateway share {_share(row)}",
        file=sys.stderr,
        flush=True,
    )


async def _measure_grpc(models_dir: Path, seconds: float, clients: list[int], outputs: dict, results: dict) -> None:
    """The same instant step over the gateway's real gRPC path: benchmarks/_instant_serving.py
    answers the step at once with OUTPUTS and passes every other call on to the loopback model server."""
    import tempfile

    import numpy as np
    from _servers import loopback_serving

    from memefly.decoding.options import DecodingOptions

    MemePipeline = _pipeline_class()
    with tempfile.TemporaryDirectory() as work, loopback_serving(models_dir, code=CODE) as upstream:
        step_file = Path(work) / "step.npz"
        np.savez(step_file, **outputs)
        proxy = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("_instant_serving.py")),
                "--upstream",
                upstream,
                "--recorded",
                str(step_file),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            target = proxy.stdout.readline().split()[-1]
            async with MemePipeline(target, target, max_in_flight=max(clients)) as client:
                service = client.service
                template = service.templates[0].name
                counted = service.scheduler.step = CountedStep(service.scheduler.step)
                for name, values in OPTION_SETS.items():
                    for n in clients:
                        row = await _load(service, template, DecodingOptions(**values), n, seconds, counted)
                        # Here a step call's time is the wire and the proxy's, not the gateway's loop:
                        # the gateway's own cost per row-step is its whole wall time.
                        row["us_per_row_step"] = 1e6 / max(1.0, row["row_steps_per_s"])
                        row["gateway_share"] = None  # two calls overlap over gRPC: no share to tell
                        row.update(decoder="instant-grpc", options=name, clients=n)
                        _report(results, row)
        finally:
            proxy.terminate()
            proxy.wait(30)


def _share(row: dict) -> str:
    return "-" if row["gateway_share"] is None else f"{row['gateway_share']:.0%}"


def _table(all_results: list[dict]) -> str:
    commits = [r["commit"] for r in all_results]
    lines = [
        "| decoder | options | clients | "
        + " | ".join(f"{c}: memes/s, rows/call, us/row-step (CPU), gateway share" for c in commits)
        + " |",
        "|---|---|---|" + "---|" * len(commits),
    ]
    keys = [(r["decoder"], r["options"], r["clients"]) for r in all_results[0]["runs"]]
    for key in keys:
        cells = []
        for result in all_results:
            row = next((r for r in result["runs"] if (r["decoder"], r["options"], r["clients"]) == key), None)
            cells.append(
                "-"
                if row is None
                else f"{row['memes_per_s']:.0f}, {row['rows_per_call']:.0f}, {row['us_per_row_step']:.2f} "
                f"({row['cpu_us_per_row_step']:.2f}), {_share(row)}"
            )
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    lines.append(
        "| gRPC wire, one 1,024-row step (gateway side) | | | "
        + " | ".join(
            "encode {encode:.0f} us + decode {decode:.0f} us ({request_bytes:,} + {response_bytes:,} bytes)".format(
                **r["wire"]
            )
            if "wire" in r
            else "-"
            for r in all_results
        )
        + " |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    from memefly.paths import models_dir as default_models_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement, after a warm-up round")
    parser.add_argument("--clients", default="8,64,256", help="concurrent clients, comma-separated")
    parser.add_argument("--code", type=Path, action="append", default=[], help="also measure this checkout")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one checkout, JSON to stdout
    args = parser.parse_args(argv)
    clients = [int(n) for n in args.clients.split(",")]
    if args.worker:
        print(json.dumps(asyncio.run(measure(args.models_dir, args.seconds, clients))))
        return 0
    all_results = []
    for code in [*args.code, ROOT]:  # others first: this checkout's numbers last, as "after"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--models-dir",
            str(args.models_dir.resolve()),
            "--seconds",
            str(args.seconds),
            "--clients",
            args.clients,
        ]
        out = subprocess.run(
            command,
            env={**os.environ, "MEMEFLY_BENCH_CODE": str(code.resolve())},
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            cwd=code,
        )
        all_results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=1))
    print(_table(all_results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
