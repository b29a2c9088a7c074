"""`memefly serve --workers N`: N gateway processes sharing one listening socket.

The parent binds the socket, starts N workers (spawned: no TensorFlow state is forked), and
forwards SIGTERM/SIGINT to them, so each drains its own requests (gateway/draining.py); the
kernel spreads new connections over the workers. A worker that dies unexpectedly is started
again; one that could not start (uvicorn's startup failed, or it died within
FAILED_START_S) stops them all: it would fail the same way again.
As uvicorn's own `--workers`, but each worker runs memefly's server (header deadline,
draining) with the parent's settings, which uvicorn's supervisor cannot pass.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time

from gateway.settings import Settings

log = logging.getLogger(__name__)

FAILED_START_S = 5.0  # a worker that dies sooner than this after its start could not start
STARTUP_FAILURE = 3  # uvicorn's exit code for it


def serve_one(settings: Settings, host: str, port: int, log_level: str, sockets: list[socket.socket] | None = None) -> None:
    """One gateway process: the app, uvicorn with memefly's configuration, draining on SIGTERM."""
    from gateway.app import create_app
    from gateway.draining import DrainingServer
    from gateway.server import uvicorn_config

    if sockets is not None:  # a spawned worker: logging is its own
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn_config(app, settings, host=host, port=port, log_level=log_level)
    server = DrainingServer(config, app.state.drain, settings.shutdown_grace_s)
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def serve(settings: Settings, host: str, port: int, log_level: str) -> int:
    """Run settings.workers gateway processes on HOST:PORT until a signal; 0, or 1 when a worker
    could not start."""
    if settings.workers == 1:
        serve_one(settings, host, port, log_level)
        return 0
    import uvicorn

    listener = uvicorn.Config(app=None, host=host, port=port).bind_socket()  # as uvicorn binds it (IPv6 too)
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(sig, frame) -> None:
        received.append(sig)
        if stop.is_set():  # a second signal while the workers drain: pass it on (they stop at once)
            _signal_all(workers, sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    started: dict[int, float] = {}  # pid -> when

    def start() -> multiprocessing.Process:
        process = context.Process(target=serve_one, args=(settings, host, port, log_level, [listener]),
                                  name="memefly-gateway", daemon=False)
        process.start()
        started[process.pid] = time.monotonic()
        return process

    workers: list[multiprocessing.Process] = []  # the signal handler reads it
    workers += [start() for _ in range(settings.workers)]
    log.info("%d gateway workers on %s:%d (pids %s)", len(workers), host, port, ", ".join(str(w.pid) for w in workers))
    failed = False
    while not stop.wait(0.5):
        for index, worker in enumerate(workers):
            if worker.is_alive():
                continue
            if worker.exitcode == STARTUP_FAILURE or time.monotonic() - started[worker.pid] < FAILED_START_S:
                log.error("gateway worker %d exited with %s while starting: stopping", worker.pid, worker.exitcode)
                failed = True
                stop.set()
                break
            log.warning("gateway worker %d exited with %s: starting another", worker.pid, worker.exitcode)
            workers[index] = start()
    _signal_all(workers, received[0] if received else signal.SIGTERM)
    for worker in workers:
        worker.join()
    listener.close()
    return 1 if failed else 0


def _signal_all(workers: list[multiprocessing.Process], sig: int) -> None:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            try:
                os.kill(worker.pid, sig)
            except ProcessLookupError:
                pass
