"""The `memefly` command: subcommands, help with examples, clear errors, fast start."""

import json
import subprocess
import sys

import pytest

from memefly.cli import build_parser, main


def test_cli_module_does_not_import_tensorflow():
    # Lazy imports keep `memefly --help` fast: TensorFlow loads only in the subcommand that needs it.
    code = "import sys, memefly.cli; print('tensorflow' in sys.modules, 'model_export' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "prepare"],
        ["data", "download"],
        ["train"],
        ["evaluate"],
        ["export"],
        ["serve"],
        ["generate"],
        ["batch"],
    ],
)
def test_every_subcommand_has_help_with_examples(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_memefly_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = capsys.readouterr().out
    for command in ("data", "train", "evaluate", "export", "serve", "loopback", "generate", "batch"):
        assert f"    {command} " in listed, command


def test_batch_takes_the_models_folder_by_the_name_serve_and_generate_use():
    for flag in ("--models-dir", "--models"):  # --models: batch's first name for it, still taken
        args = build_parser().parse_args(["batch", "x.jpg", "--out", "o.jsonl", flag, "/srv/models"])
        assert str(args.models_dir) == "/srv/models"


def test_serve_starts_the_gateway_on_the_exported_models(served_models_dir, tmp_path):
    import os
    import signal

    import httpx
    from net import free_port, wait_until_ready

    port = free_port()
    env = dict(os.environ, MEMEFLY_BACKEND="grpc")  # the flag must win over the environment
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memefly.cli",
            "serve",
            "--port",
            str(port),
            "--backend",
            "inprocess",
            "--models-dir",
            str(served_models_dir),
            "--log-level",
            "info",
        ],
        env=env,
        stderr=(tmp_path / "serve.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 180, tmp_path / "serve.log")
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


def test_evaluate_and_loopback_without_models_say_so(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "no_run")]) == 2
    assert "holds no trained weights" in capsys.readouterr().err
    assert main(["loopback", "--models-dir", str(tmp_path / "no_models"), "--port", "0"]) == 2
    assert "no exported models in" in capsys.readouterr().err


def test_prepare_command_end_to_end(tiny_dataset, tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", str(tiny_dataset), "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "captions kept:" in out
    assert (tmp_path / "captions.jsonl").exists() and (tmp_path / "report.json").exists()


def test_generate_gives_memes_for_images_and_templates_and_errors_per_input(served_models_dir, tiny_dataset, tmp_path):
    image = tiny_dataset / "dataset" / "templates" / "img" / "Grumpy-Cat.jpg"
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    command = [
        sys.executable,
        "-m",
        "memefly.cli",
        "generate",
        str(image),
        str(text_file),
        str(missing),
        "--template",
        "drake hotline bling",
        "--n",
        "3",
        "--models-dir",
        str(served_models_dir),
    ]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # some inputs failed, and said so
    out = json.loads(result.stdout)
    assert [o["input"] for o in out] == ["drake hotline bling", str(image), str(text_file), str(missing)]
    assert len(out[0]["memes"]) == 3 and out[0]["templates"][0]["name"] == "Drake-Hotline-Bling"
    assert len(out[1]["memes"]) == 3 and out[1]["templates"][0]["name"] == "Grumpy-Cat"
    assert all(m["boxes"] and m["text"] == "\n".join(m["boxes"]) for m in out[1]["memes"])
    assert out[2]["error"]["status"] == 415 and "JPEG" in out[2]["error"]["detail"]
    assert out[3]["error"]["status"] == 400 and "cannot read it" in out[3]["error"]["detail"]

    pretty = subprocess.run(command[:4] + command[7:], capture_output=True, text=True, timeout=300)
    assert pretty.returncode == 0, pretty.stderr
    lines = pretty.stdout.splitlines()
    assert lines[0].startswith("drake hotline bling  (Drake-Hotline-Bling ")
    assert [line.split(".")[0].strip() for line in lines[1:4]] == ["1", "2", "3"]
    assert lines[1] == lines[1].upper()


def test_generate_says_when_an_image_is_no_known_template(served_models_dir, tmp_path):
    import numpy as np
    from PIL import Image

    photo = tmp_path / "holiday.jpg"  # soft colour blobs: no template's picture
    cells = np.random.default_rng(1).integers(0, 255, (45, 60, 3), dtype=np.uint8)
    Image.fromarray(cells).resize((480, 360), Image.Resampling.BICUBIC).save(photo, format="JPEG")
    command = [
        sys.executable,
        "-m",
        "memefly.cli",
        "generate",
        str(photo),
        "--n",
        "2",
        "--models-dir",
        str(served_models_dir),
    ]
    pretty = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert pretty.returncode == 0, pretty.stderr
    assert "  (not a known template; in the style of: " in pretty.stdout.splitlines()[0]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    (out,) = json.loads(result.stdout)
    assert out["template"]["known"] is False and out["template"]["name"] == out["templates"][0]["name"]


def test_generate_needs_an_input(capsys):
    assert main(["generate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--template" in err and "Traceback" not in err
