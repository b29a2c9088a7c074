"""The `memefly` command: subcommands, help with examples, clear errors, fast start."""

import subprocess
import sys

import pytest

from memefly.cli import build_parser, main


def test_cli_module_does_not_import_tensorflow():
    # Lazy imports keep `memefly --help` fast: TensorFlow loads only in the subcommand that needs it.
    code = "import sys, memefly.cli; print('tensorflow' in sys.modules, 'model_export' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("argv", [["data", "prepare"], ["train"], ["evaluate"], ["export"], ["serve"]])
def test_every_subcommand_has_help_with_examples(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_subcommands_are_listed():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"data", "train", "evaluate", "export", "serve"} <= set(choices)


def test_serve_starts_the_gateway_on_the_exported_models(served_models_dir, tmp_path):
    import os
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MEMEFLY_BACKEND="grpc")  # the flag must win over the environment
    process = subprocess.Popen([sys.executable, "-m", "memefly.cli", "serve", "--port", str(port), "--backend", "inprocess",
                                "--models-dir", str(served_models_dir), "--log-level", "info"], env=env,
                               stderr=(tmp_path / "serve.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, "memefly serve exited"
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready after 180 s"
            time.sleep(0.3)
        assert httpx.get(url + "/readyz").json()["model"]["backend"] == "inprocess"
        response = httpx.post(url + "/memes", json={"template": "Grumpy-Cat"}, timeout=60)
        assert response.status_code == 200 and len(response.json()["memes"]) == 5
    finally:
        process.terminate()
        process.wait(30)
    log = (tmp_path / "serve.log").read_text()
    # A graceful shutdown on SIGTERM: uvicorn finishes the lifespan, then re-raises the signal.
    assert "Application shutdown complete" in log, log[-2000:]
    assert process.returncode in (0, -signal.SIGTERM)


def test_serve_refuses_bad_settings(capsys, monkeypatch):
    monkeypatch.setenv("MEMEFLY_DECODER_MAX_ROWS", "lots")
    assert main(["serve"]) == 2
    assert "MEMEFLY_DECODER_MAX_ROWS" in capsys.readouterr().err


def test_prepare_reports_a_missing_dataset_clearly(tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no dataset at" in err and "MEMEFLY_DATASET_DIR" in err


def test_train_without_prepared_data_says_what_to_run(tmp_path, capsys):
    assert main(["train", "--prepared", str(tmp_path), "--run", str(tmp_path / "run")]) == 2
    assert "memefly data prepare" in capsys.readouterr().err


def test_prepare_command_end_to_end(tiny_dataset, tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", str(tiny_dataset), "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "captions kept:" in out
    assert (tmp_path / "captions.jsonl").exists() and (tmp_path / "report.json").exists()
