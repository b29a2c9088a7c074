"""How the gateway holds up under hostile input, overload, restarts and shutdown (issue 14's table).

    python benchmarks/reliability.py --json runs/reliability.json
    git worktree add /tmp/before <commit>
    python benchmarks/reliability.py --code /tmp/before --json runs/reliability-before.json
    python benchmarks/reliability.py --table runs/reliability-before.json runs/reliability.json

Each check runs `memefly serve` of the checkout CODE (its own models: CODE/models, built on
its first start) with default settings, as a separate process, and a client in this one:

- gif: one upload of a 200-frame 4000x4000 animated GIF (2.6 MB): answer, seconds, and the
  growth of the gateway's peak memory (VmHWM, reset before).
- json: a 13 MB body of nested empty lists to /memes while /healthz is polled every 10 ms.
- disconnects: 20 clients that leave mid-upload; 5xx counted in /metrics, traceback lines logged.
- sigterm: 64 uploads in flight, each asking for 32 beams of 40 tokens (about 20 s of work for
  all on 2 cores, longer than uvicorn's own grace), then SIGTERM: how each ends. Admission
  control is off here, so that all 64 are in flight (the overload check measures it).
- outage: gRPC backend; the model server (loopback) stopped for OUTAGE_S, then started on the
  same port: seconds from it answering to /readyz 200.
- overload: 64 clients for 60 s with the request deadline set to half the median latency that
  64 clients get with no deadline (twice what can finish in time); clients wait Retry-After.
- fuzz: schemathesis, every route, 25 generated requests each: 5xx and schema mismatches.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _http_load import Connection, multipart_request  # noqa: E402
from _servers import ROOT, default_image, free_port, gateway_process, loopback_serving, percentile  # noqa: E402
from latency import variants  # noqa: E402

from memefly.paths import cache_dir  # noqa: E402

CLIENTS = 64
HEAVY = {"num_beams": "32", "num_return_sequences": "5", "min_length": "40", "max_length": "40"}
TARGETS = {
    "gif": "4xx or one frame: < 1 s, < 200 MB",
    "json": "< 100 ms",
    "disconnects": "0",
    "sigterm": "0 x 5xx other than 503; all that can finish in the grace period finish",
    "outage": "<= 2 s after it answers",
    "overload": "0 timeouts: fast 503s instead",
    "fuzz": "0 mismatches, 0 5xx",
}
LABELS = {
    "gif": "animated GIF 200x4000^2",
    "json": "/healthz during a 13 MB hostile JSON",
    "disconnects": "disconnects counted as 5xx",
    "sigterm": f"SIGTERM with {CLIENTS} in flight (32 beams x 40 tokens each; admission control off)",
    "outage": "/readyz after a model-server outage (60 s by default)",
    "overload": f"{CLIENTS} clients x 60 s, 2x overload",
    "fuzz": "schemathesis, all routes",
}


# --- checks on one running gateway -------------------------------------------------------


def animated_gif() -> bytes:
    """200 frames of 4000 x 4000, each a different colour (2.6 MB; 20 s to build, so kept)."""
    path = cache_dir() / "benchmarks" / "animated-200x4000.gif"
    if not path.exists():
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        frames = (Image.new("P", (4000, 4000), i) for i in range(1, 200))
        Image.new("P", (4000, 4000), 0).save(buffer, format="GIF", save_all=True, append_images=frames)
        path.write_bytes(buffer.getvalue())
    return path.read_bytes()


def peak_memory_bytes(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


def reset_peak_memory(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)


def check_gif(url: str, process) -> dict:
    data = animated_gif()
    reset_peak_memory(process.pid)
    before = peak_memory_bytes(process.pid)
    started = time.perf_counter()
    response = httpx.post(url + "/memes", files={"image": ("frames.gif", data, "image/gif")}, timeout=300)
    seconds = time.perf_counter() - started
    grown = peak_memory_bytes(process.pid) - before
    return {
        "status": response.status_code,
        "seconds": seconds,
        "peak_growth_mb": grown / 2**20,
        "text": f"{response.status_code} in {seconds:.2f} s, +{grown / 2**20:,.0f} MB peak",
    }


def check_json(url: str, process) -> dict:
    body = b'{"template": "Grumpy-Cat", "exclude": [' + b"[]," * 4_333_333 + b"[]]}"  # 13 MB
    result = {}

    def send():
        started = time.perf_counter()
        try:
            answer = httpx.post(url + "/memes", content=body, headers={"content-type": "application/json"}, timeout=300)
            result["status"] = answer.status_code
        except httpx.HTTPError as error:
            result["status"] = type(error).__name__
        result["seconds"] = time.perf_counter() - started

    sender = threading.Thread(target=send)
    waits = []
    with httpx.Client(timeout=60) as client:
        client.get(url + "/healthz")
        sender.start()
        while sender.is_alive() or len(waits) < 50:
            started = time.perf_counter()
            client.get(url + "/healthz")
            waits.append(time.perf_counter() - started)
            time.sleep(0.01)
    sender.join()
    worst = max(waits)
    return {
        "healthz_max_s": worst,
        "healthz_p50_s": percentile(waits, 50),
        "body_status": result["status"],
        "text": f"max {1000 * worst:,.0f} ms (p50 {1000 * percentile(waits, 50):.0f} ms); the body: "
        f"{result['status']} in {result['seconds']:.2f} s",
    }


def server_errors(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=30).text
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("memefly_requests_total{") and re.search(r'status="5\d\d"', line)
        )
    )


def check_disconnects(url: str, process, log: Path, clients: int = 20) -> dict:
    before_errors, before_log = server_errors(url), log.read_text(errors="replace")
    port = int(url.rsplit(":", 1)[1])
    image = default_image()
    request = multipart_request(url, "/memes", {"image": ("a.jpg", image * 40, "image/jpeg")}, {})
    for _ in range(clients):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request[: len(request) // 3])  # headers and a third of the body, then gone
    time.sleep(2)
    errors = server_errors(url) - before_errors
    logged = log.read_text(errors="replace")[len(before_log) :]
    tracebacks = logged.count("Traceback")
    return {
        "clients": clients,
        "counted_5xx": errors,
        "traceback_lines": sum(1 for line in logged.splitlines() if line.startswith(("Traceback", "  File "))),
        "tracebacks": tracebacks,
        "text": f"{errors} of {clients} counted 5xx; {tracebacks} tracebacks logged",
    }


async def _uploads(
    url: str,
    images: list[bytes],
    results: list,
    stop_at: float | None = None,
    honour_retry_after: bool = False,
    fields: dict[str, str] | None = None,
) -> None:
    """One client per image, each sending its upload (again and again until STOP_AT)."""

    async def client(image: bytes):
        connection = Connection(url)
        request = multipart_request(url, "/memes", {"image": ("a.jpg", image, "image/jpeg")}, fields or {})
        try:
            while True:
                started = time.perf_counter()
                body = b""
                try:
                    status, body = await connection.send(request)
                except (OSError, asyncio.IncompleteReadError) as error:
                    status = f"dropped ({type(error).__name__})"
                    await connection.close()
                results.append((status, time.perf_counter() - started, started, body[:200] if status != 200 else b""))
                if stop_at is None or time.perf_counter() >= stop_at:
                    return
                if status == 503 and honour_retry_after:
                    await asyncio.sleep(1.0)
                elif not isinstance(status, int):
                    await asyncio.sleep(0.1)
        finally:
            await connection.close()

    await asyncio.gather(*(client(image) for image in images))


def tally(results: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status, *_ in results:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return dict(sorted(counts.items()))


def check_sigterm(code: Path, models: Path, log: Path) -> dict:
    images = variants(default_image(), CLIENTS + 1)
    with gateway_process("inprocess", models, code=code, log=log, admission_control="false") as (url, process):
        httpx.post(url + "/memes", files={"image": ("a.jpg", images[-1], "image/jpeg")}, timeout=120)  # warm
        results: list = []

        async def scenario():
            load = asyncio.ensure_future(_uploads(url, images[:CLIENTS], results, fields=HEAVY))
            await asyncio.sleep(2.0)  # all sent and in flight
            signalled = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            await load
            return signalled, time.perf_counter() - signalled

        signalled, after_signal = asyncio.run(scenario())
        exit_code = process.wait(120)
    counts = tally(results)
    bad = sum(n for status, n in counts.items() if status != "200" and status != "503")
    busy = sum(1 for status, *_, body in results if status == 503 and b"busy" in body)  # admission, not the drain
    return {
        "counts": counts,
        "other_than_200_503": bad,
        "last_answer_after_signal_s": after_signal,
        "refused_busy": busy,
        "exit_code": exit_code,
        "text": ", ".join(f"{n} x {s}" for s, n in counts.items())
        + (f" ({busy} x 503 'busy' at arrival: would not finish within the deadline)" if busy else "")
        + f"; last answer {after_signal:.1f} s after it",
    }


def check_outage(code: Path, models: Path, log: Path, outage_s: float) -> dict:
    port = free_port()
    server = loopback_serving(models, code=code, port=port)
    target = server.__enter__()
    try:
        with gateway_process("grpc", models, target, code=code, log=log) as (url, process):
            server.__exit__(None, None, None)
            server = None
            stopped = time.perf_counter()
            while (
                httpx.get(url + "/readyz", timeout=10).status_code == 200 and time.perf_counter() - stopped < outage_s
            ):
                time.sleep(0.1)
            noticed = time.perf_counter() - stopped
            time.sleep(max(0.0, outage_s - (time.perf_counter() - stopped)))
            server = loopback_serving(models, code=code, port=port)
            server.__enter__()
            answering = time.perf_counter()  # the loopback prints "listening on" once it answers
            while httpx.get(url + "/readyz", timeout=10).status_code != 200:
                if time.perf_counter() - answering > 120:
                    break
                time.sleep(0.05)
            ready_after = time.perf_counter() - answering
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    return {
        "outage_s": outage_s,
        "noticed_after_s": noticed,
        "ready_after_s": ready_after,
        "text": f"ready {ready_after:.1f} s after it answers ({outage_s:.0f} s outage, noticed in {noticed:.1f} s)",
    }


def _load(url: str, images: list[bytes], seconds: float) -> list:
    results: list = []
    asyncio.run(_uploads(url, images, results, stop_at=time.perf_counter() + seconds, honour_retry_after=True))
    return results


def check_overload(code: Path, models: Path, log: Path, seconds: float) -> dict:
    images = variants(default_image(), CLIENTS)
    with gateway_process("inprocess", models, code=code, log=log) as (url, _):
        _load(url, images, 10)  # warm: every image encoded once, estimates made
        measured = _load(url, images, 20)
    natural = percentile([s for status, s, *_ in measured if status == 200], 50)
    deadline = round(natural / 2, 2)
    with gateway_process("inprocess", models, code=code, log=log, request_timeout_s=deadline) as (url, _):
        for image in images[:4]:  # a gateway in service has measured its calls
            httpx.post(url + "/memes", files={"image": ("a.jpg", image, "image/jpeg")}, timeout=120)
        results = _load(url, images, seconds)
    counts = tally(results)
    ok = [s for status, s, *_ in results if status == 200]
    refused = [s for status, s, *_ in results if status == 503]
    began = min(at for _, _, at, _ in results)
    timeouts = counts.get("504", 0)
    late = sorted(round(at - began, 1) for status, _, at, _ in results if status == 504)  # when they were sent
    return {
        "natural_p50_s": natural,
        "deadline_s": deadline,
        "counts": counts,
        "timeouts": timeouts,
        "timeouts_sent_at_s": late,
        "ok_p99_s": percentile(ok, 99) if ok else None,
        "refused_p99_s": percentile(refused, 99) if refused else None,
        "text": f"deadline {deadline:g} s (64-client p50 {natural:.1f} s): "
        + ", ".join(f"{n} x {s}" for s, n in counts.items())
        + (f"; 503 p99 {1000 * percentile(refused, 99):.0f} ms" if refused else "")
        + (f"; 200 p99 {percentile(ok, 99):.1f} s" if ok else ""),
    }


def check_fuzz(url: str, process, examples: int = 25) -> dict:
    import schemathesis
    import schemathesis.checks as checks
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    failures: dict[str, int] = {}
    cases = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            nonlocal cases
            cases += 1
            try:
                case.call_and_validate(timeout=60, excluded_checks=[checks.positive_data_acceptance])
            except Exception as error:  # one failing case is counted, and generation goes on
                for failure in getattr(error, "exceptions", [error]):
                    kind = "5xx" if "Server error" in str(failure) else str(failure).strip().splitlines()[0][:80]
                    failures[kind] = failures.get(kind, 0) + 1

        fuzz()
    server = failures.get("5xx", 0)
    mismatches = sum(failures.values()) - server
    return {
        "cases": cases,
        "5xx": server,
        "mismatches": mismatches,
        "failures": failures,
        "text": f"{cases} requests: {server} x 5xx, {mismatches} mismatches",
    }


# --- running and printing ------------------------------------------------------------------


def run(code: Path, only: list[str], outage_s: float, overload_s: float, log: Path) -> dict:
    models = Path(os.environ.get("MEMEFLY_MODELS_DIR", code / "models"))
    results: dict = {"code": str(code), "commit": _commit(code)}

    def record(name, check):
        print(f"{name} ...", file=sys.stderr, flush=True)
        results[name] = check()
        print(f"{name}: {results[name]['text']}", file=sys.stderr, flush=True)

    shared = [name for name in ("gif", "json", "disconnects", "fuzz") if name in only]
    if shared:
        with gateway_process("inprocess", models, code=code, log=log) as (url, process):
            for name in shared:
                if name == "disconnects":
                    record(name, lambda: check_disconnects(url, process, log))
                else:
                    record(name, lambda name=name: CHECKS[name](url, process))
    if "sigterm" in only:
        record("sigterm", lambda: check_sigterm(code, models, log))
    if "outage" in only:
        record("outage", lambda: check_outage(code, models, log, outage_s))
    if "overload" in only:
        record("overload", lambda: check_overload(code, models, log, overload_s))
    return results


CHECKS = {"gif": check_gif, "json": check_json, "fuzz": check_fuzz}


def _commit(code: Path) -> str:
    """The commit measured, with `+` when its checkout has changes not committed."""

    def git(*args):
        return subprocess.run(["git", "-C", str(code), *args], capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or str(code)) + ("+" if git("status", "--porcelain", "-uno") else "")


def table(runs: list[dict]) -> str:
    heads = ["check"] + [f"{r['commit']}" for r in runs] + ["target"]
    rows = [[LABELS[name]] + [r.get(name, {}).get("text", "-") for r in runs] + [TARGETS[name]] for name in LABELS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose gateway is measured")
    parser.add_argument("--only", default=",".join(LABELS), help="comma-separated checks: " + ",".join(LABELS))
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--log",
        type=Path,
        default=Path("/tmp/memefly-reliability.log"),
        help="the gateways' logs (the disconnect check counts tracebacks in it)",
    )
    parser.add_argument(
        "--table", nargs="+", type=Path, metavar="RESULTS.json", help="print these runs side by side and exit"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(p.read_text()) for p in args.table]))
        return 0
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(LABELS)
    if unknown:
        parser.error(f"unknown checks: {', '.join(sorted(unknown))}")
    args.log.write_text("")
    results = run(args.code.resolve(), only, args.outage_s, args.overload_s, args.log)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print(table([results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
