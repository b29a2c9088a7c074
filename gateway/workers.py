"""`memefly serve --workers N`: N gateway processes sharing one listening socket.

The parent binds the socket, starts N workers (spawned: no TensorFlow state is forked), and
passes SIGTERM/SIGINT on to them, so each drains its own requests (gateway/api/draining.py); the
kernel spreads new connections over the workers that are listening. Each worker is in its
own process group, so a terminal's Ctrl-C reaches the parent only, which passes it on once.
A worker that dies after it started listening is started again; one that dies before (its
app, a model check or the socket failed) stops them all: it would fail the same way again.
As uvicorn's own `--workers`, but each worker runs memefly's server (header deadline,
draining) with the parent's settings, which uvicorn's supervisor cannot pass.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.settings import Settings

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Event
    from types import FrameType

log = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # the exit code of a worker that never listened (uvicorn's)
RESTART_BACKOFF_S = 1.0  # a slot is started again no sooner than this after its last start


def serve_one(
    settings: Settings,
    host: str,
    port: int,
    log_level: str,
    sockets: list[socket.socket] | None = None,
    listening: Event | None = None,
) -> None:
    """One gateway process: the app, uvicorn with memefly's configuration, draining on SIGTERM.
    As a worker (SOCKETS given), sets the LISTENING event once it takes connections."""
    from gateway.api.app import create_app
    from gateway.api.draining import DrainingServer
    from gateway.server import uvicorn_config

    if sockets is not None:
        os.setpgrp()  # signals come from the parent only (it passes each on once)
        from gateway import logs

        logs.configure(log_level)
    app = create_app(settings)
    config = uvicorn_config(app, settings, host=host, port=port, log_level=log_level)
    server = DrainingServer(
        config, app.state.drain, settings.shutdown_grace_s, on_started=listening.set if listening is not None else None
    )
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn raises the SIGINT it handled again once it has shut down
        pass
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


@dataclass
class _Worker:
    process: BaseProcess
    listening: Event  # set once the worker takes connections
    started_at: float


def serve(settings: Settings, host: str, port: int, log_level: str) -> int:
    """Run settings.workers gateway processes on HOST:PORT until a signal; 0, or 1 when a worker
    could not start. Raises WrongTarget when a model server serves another model than its setting says."""
    if settings.backend == "grpc":
        from gateway.backends.grpc_backend import check_targets_now

        check_targets_now(settings)
    if settings.workers == 1:
        serve_one(settings, host, port, log_level)
        return 0
    import uvicorn

    from gateway.logs import uvicorn_log_config

    listener = uvicorn.Config(
        app="",  # no app: this config only binds the socket
        host=host,
        port=port,  # as uvicorn binds it (IPv6 too)
        log_config=uvicorn_log_config(log_level),
    ).bind_socket()
    context = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    received: list[int] = []  # the signal handler only appends: the loop below acts on it

    def on_signal(sig: int, frame: FrameType | None) -> None:
        received.append(sig)

    def start() -> _Worker:
        listening = context.Event()
        process = context.Process(
            target=serve_one, args=(settings, host, port, log_level, [listener], listening), name="memefly-gateway"
        )
        process.start()
        return _Worker(process, listening, time.monotonic())

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    failed = False
    try:
        for _ in range(settings.workers):
            workers.append(start())
        log.info(
            "%d gateway workers on %s:%d (pids %s)",
            len(workers),
            host,
            port,
            ", ".join(str(w.process.pid) for w in workers),
        )
        while not received and not failed:
            time.sleep(0.2)
            for index, worker in enumerate(workers):
                if worker.process.is_alive():
                    continue
                if not worker.listening.is_set():
                    log.error(
                        "gateway worker %d exited with %s before it listened: stopping the others",
                        worker.process.pid,
                        worker.process.exitcode,
                    )
                    failed = True
                    break
                if time.monotonic() - worker.started_at < RESTART_BACKOFF_S:
                    continue
                log.warning(
                    "gateway worker %d exited with %s: starting another", worker.process.pid, worker.process.exitcode
                )
                workers[index] = start()
        if not received:  # a worker failed: stop the others
            _signal_all(workers, signal.SIGTERM)
        passed_on = 0  # pass each signal on; a second one makes the workers stop at once
        while any(w.process.is_alive() for w in workers):
            while passed_on < len(received):
                _signal_all(workers, received[passed_on])
                passed_on += 1
            for worker in workers:
                worker.process.join(0.2)
    finally:
        for worker in workers:  # an error above: no worker is left behind
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
        listener.close()
    return 1 if failed else 0


def _signal_all(workers: list[_Worker], sig: int) -> None:
    for worker in workers:
        if worker.process.is_alive() and worker.process.pid is not None:
            try:
                os.kill(worker.process.pid, sig)
            except ProcessLookupError:
                pass
