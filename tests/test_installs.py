"""Installs that fit the use, each in a fresh virtual environment: the base install is the light
HTTP client, and `memefly[serve]` runs the gateway over gRPC without any TensorFlow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from net import free_port, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
NO_TENSORFLOW = """
import importlib.util, sys
import gateway.api.app, gateway.backends.grpc_backend, gateway.pipeline, memefly.cli.batch_run, memefly.http
app = gateway.api.app.create_app(gateway.settings.Settings(backend="grpc"))
assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is installed"
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras")]
print("no tensorflow")
"""


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The project's sources alone (pip builds in the folder it installs from)."""
    folder = tmp_path_factory.mktemp("source")
    for name in ("memefly", "gateway", "model_export"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    return folder


def test_the_base_install_is_the_client_and_serve_runs_the_gateway_without_tensorflow(
    source, tmp_path, loopback, served_models_dir
):
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    python, memefly = venv / "bin" / "python", venv / "bin" / "memefly"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]

    installed = run(*pip, str(source))
    assert installed.returncode == 0, installed.stderr[-3000:]
    light = run(str(python), "-c", "import memefly.http, sys; print(sorted(m for m in sys.modules if m == 'numpy'))")
    assert light.returncode == 0 and light.stdout.strip() == "[]", light.stderr
    assert run(str(memefly), "--help").returncode == 0
    serve = run(str(memefly), "serve", "--backend", "grpc")
    assert serve.returncode == 2 and "pip install 'memefly[serve]'" in serve.stderr, serve.stderr

    installed = run(*pip, f"{source}[serve]")
    assert installed.returncode == 0, installed.stderr[-3000:]
    checked = run(str(python), "-c", NO_TENSORFLOW, cwd=tmp_path)
    assert checked.returncode == 0 and "no tensorflow" in checked.stdout, checked.stderr[-3000:]
    # Installed, not a checkout: default paths are in the user's data folder, never site-packages.
    data = tmp_path / "data"
    where = run(
        str(python),
        "-c",
        "from memefly import paths; print(paths.models_dir(), paths.runs_dir(), paths.templates_download_dir())",
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MEMEFLY_")}, "MEMEFLY_DATA_DIR": str(data)},
        cwd=tmp_path,
    )
    assert where.stdout.split() == [str(data / "models"), str(data / "runs"), str(data / "data" / "templates")]

    # The light gateway serves real memes from TF Serving (the loopback stand-in).
    env = {
        **os.environ,
        "MEMEFLY_BACKEND": "grpc",
        "MEMEFLY_ENCODER_TARGET": loopback.target,
        "MEMEFLY_DECODER_TARGET": loopback.target,
        "MEMEFLY_DATA_DIR": str(tmp_path / "data"),
    }
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(memefly), "serve", "--port", str(port)], env=env, cwd=tmp_path, stdout=output, stderr=output
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", server, 180, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            template = client.get("/templates").json()["templates"][0]["name"]
            answer = client.post("/memes", json={"template": template})
        assert answer.status_code == 200, answer.text
        assert answer.json()["memes"] and answer.json()["model"]["backend"] == "grpc"
    finally:
        server.terminate()
        server.wait(30)
