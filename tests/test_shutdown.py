"""SIGTERM under load, against `memefly serve` in a subprocess (gRPC to the loopback TF Serving):
/readyz and new requests get 503 at once, requests in flight finish within the grace period,
and what the grace period cuts off gets 503 with Retry-After, never a 500."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from net import free_port, wait_until_ready
from PIL import Image

from memefly import contract as c

IN_FLIGHT = 6


def start_serve(loopback, grace_s: float, log_path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(
        os.environ,
        MEMEFLY_SHUTDOWN_GRACE_S=str(grace_s),
        MEMEFLY_CALL_TIMEOUT_S="30",
        MEMEFLY_REQUEST_TIMEOUT_S="60",
        MEMEFLY_HEALTH_INTERVAL_S="30",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memefly.cli",
            "serve",
            "--port",
            str(port),
            "--backend",
            "grpc",
            "--encoder-target",
            loopback.target,
            "--decoder-target",
            loopback.target,
            *flags,
        ],
        env=env,
        stderr=log_path.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process, 120, log_path)
    return process, url


def assert_draining(url: str) -> None:
    """Draining: not ready and no new work (503 with Retry-After), yet alive."""
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
    late = httpx.post(url + "/memes", json={"template": "Grumpy-Cat"})
    assert late.status_code == 503 and late.headers["retry-after"]
    assert httpx.get(url + "/healthz").status_code == 200  # alive while draining


def distinct_png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (i * 37 % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def stop_under_load(
    process: subprocess.Popen, url: str, loopback, encoder_delay_s: float, stop, settle_s: float
) -> list:
    """Requests in flight (each waits ENCODER_DELAY_S for the encoder), then STOP() signals; the
    server drains meanwhile. The answers, once the server has exited."""
    loopback.set_delay(encoder_delay_s, model=c.ENCODER_MODEL)
    answers, threads = send_in_flight(url)
    time.sleep(1.0)  # all of them are in flight
    stop()
    time.sleep(settle_s)
    assert_draining(url)
    for thread in threads:
        thread.join(60)
    process.wait(60)
    return answers


def send_in_flight(url: str) -> tuple[list, list[threading.Thread]]:
    answers: list = [None] * IN_FLIGHT

    def one(i):
        try:
            answers[i] = httpx.post(
                url + "/memes", files={"image": ("x.png", distinct_png(i), "image/png")}, timeout=60
            )
        except httpx.HTTPError as error:
            answers[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    return answers, threads


@pytest.mark.parametrize("grace_s, encoder_delay_s", [(20.0, 3.0), (1.0, 6.0)], ids=["all-finish", "cut-off"])
def test_sigterm_drains_in_flight_requests(loopback, tmp_path, grace_s, encoder_delay_s):
    process, url = start_serve(loopback, grace_s, tmp_path / "serve.log")
    try:
        answers = stop_under_load(
            process, url, loopback, encoder_delay_s, lambda: process.send_signal(signal.SIGTERM), settle_s=0.3
        )
    finally:
        loopback.set_delay(0.0)
        if process.poll() is None:
            process.kill()
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    if grace_s > encoder_delay_s:
        assert statuses == [200] * IN_FLIGHT, statuses
    else:
        assert statuses == [503] * IN_FLIGHT, statuses
        assert all(a.headers.get("retry-after") for a in answers)
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert process.returncode in (0, -signal.SIGTERM)


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":  # a live child (not a zombie)
            found.add(int(entry))
    return found


def workers_of(process: subprocess.Popen, count: int, timeout_s: float = 60, gone: int | None = None) -> set[int]:
    """The parent's COUNT worker pids, once there are that many (and GONE is not among them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {pid for pid in children(process.pid) if not _is_helper(pid)}
        if len(found) == count and gone not in found:
            return found
        assert time.monotonic() < deadline, f"workers {found}, wanted {count} without {gone}"
        time.sleep(0.2)


def _is_helper(pid: int) -> bool:
    """multiprocessing's resource tracker, also a child of the parent."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"resource_tracker" in cmdline.read()
    except OSError:
        return True


def test_workers_share_the_port_are_replaced_when_they_die_and_drain_on_sigterm(loopback, tmp_path):
    process, url = start_serve(loopback, 20.0, tmp_path / "serve.log", "--workers", "2")
    try:
        first = workers_of(process, 2)
        answers, threads = send_in_flight(url)  # each worker listens only once ready: no 503 while starting
        for thread in threads:
            thread.join(60)
        assert [a.status_code for a in answers] == [200] * IN_FLIGHT
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        replaced = workers_of(process, 2, timeout_s=30, gone=killed)
        assert len(replaced & first) == 1
        deadline = time.monotonic() + 60
        while httpx.get(url + "/readyz").status_code != 200:  # the other worker answers meanwhile
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # Until the new worker has had its first check and listens too (two at the start, one now).
        while (tmp_path / "serve.log").read_text().count("Application startup complete.") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)

        # As systemd stops a service: the signal reaches every process at once, and the parent
        # passes it on as well; each worker must drain once, not take the second copy as "now".
        def systemd_stop():
            for pid in (process.pid, *workers_of(process, 2)):
                os.kill(pid, signal.SIGTERM)

        # 8 s: longer than uvicorn's own 5 s shutdown, so only the drain lets these finish.
        answers = stop_under_load(process, url, loopback, 8.0, systemd_stop, settle_s=0.5)
    finally:
        loopback.set_delay(0.0)
        if process.poll() is None:
            process.kill()
    assert [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers] == [200] * IN_FLIGHT
    assert process.returncode == 0
    assert not children(process.pid)
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "starting another" in log and log.count("draining for up to") == 2
