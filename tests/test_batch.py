"""The batch client: MemePipeline straight to TF Serving (the loopback server) or in-process,
and `memefly batch` over folders of good, corrupt and non-image files, interrupted and resumed."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from gateway.pipeline import Item, MemePipeline
from memefly import contract as c
from memefly.cli.batch_inputs import InputError, expand
from memefly.cli.batch_results import ResultsFile
from memefly.decoding.options import DecodingOptions

ROOT = Path(__file__).resolve().parent.parent


def picture(seed: int, kind: str = "JPEG", size=(96, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path, tiny_dataset) -> dict[str, list[Path]]:
    """Good images (some nested, one a copy of another), broken ones with image names, and
    files that are no images by name (not picked up from the folder)."""
    root = tmp_path / "images"
    (root / "nested" / "deeper").mkdir(parents=True)
    good = []
    for i in range(5):
        path = root / f"photo{i}.jpg"
        path.write_bytes(picture(i))
        good.append(path)
    (root / "nested" / "shot.PNG").write_bytes(picture(10, "PNG"))
    (root / "nested" / "deeper" / "same-as-photo0.jpg").write_bytes(good[0].read_bytes())
    template = tiny_dataset / "dataset" / "templates" / "img" / "Grumpy-Cat.jpg"
    (root / "nested" / "grumpy.jpg").write_bytes(template.read_bytes())
    good += [
        root / "nested" / "shot.PNG",
        root / "nested" / "deeper" / "same-as-photo0.jpg",
        root / "nested" / "grumpy.jpg",
    ]
    bad = {root / "cut.jpg": picture(20)[:200], root / "text.png": b"not an image at all", root / "empty.gif": b""}
    for path, data in bad.items():
        path.write_bytes(data)
    (root / "notes.txt").write_text("ignored: not an image extension")
    return {"root": [root], "good": sorted(good), "bad": sorted(bad)}


# ---- inputs and the results file -------------------------------------------------------------


def test_inputs_expand_folders_globs_and_lists_once_each(folder, tmp_path, monkeypatch):
    root = folder["root"][0]
    everything = sorted(folder["good"] + folder["bad"])
    assert sorted(expand([str(root)])) == everything, "recursive, by extension (any case), no notes.txt"
    assert sorted(expand([str(root / "**" / "*.jpg")])) == sorted(p for p in everything if p.suffix == ".jpg")
    assert list(expand([str(root / "notes.txt")])) == [root / "notes.txt"], "named outright: taken as it is"
    assert len(list(expand([str(root), str(root / "photo1.jpg"), str(root / "*.jpg")]))) == len(everything)

    listing = tmp_path / "list.txt"
    monkeypatch.chdir(root)
    listing.write_text("# a bucket listing\nphoto1.jpg\n\nnested\ngone.jpg\n")
    listed = list(expand([], [str(listing)]))
    assert listed[0] == root / "photo1.jpg" and root / "nested" / "grumpy.jpg" in listed
    assert listed[-1] == root / "gone.jpg", "a listed file that is gone still gets its (error) line"

    with pytest.raises(InputError, match="no such file"):
        list(expand([str(root / "missing.jpg")]))
    with pytest.raises(InputError, match="matches nothing"):
        list(expand([str(root / "*.tiff")]))
    with pytest.raises(InputError, match="cannot read the list"):
        list(expand([], [str(tmp_path / "no-list.txt")]))


def test_results_file_drops_a_cut_last_line_and_refuses_other_files(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"path": "/a.jpg", "sha256": "aa", "memes": []}\n{"path": "/b.jpg", "sha')
    with ResultsFile(out) as results:
        assert results.repaired_bytes == len('{"path": "/b.jpg", "sha')
        assert results.has("/a.jpg", "aa") and not results.has("/a.jpg", "changed") and not results.has("/b.jpg", None)
        results.write({"path": "/b.jpg", "sha256": "bb", "error": {"status": 415, "detail": "x"}})
    lines = out.read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["/a.jpg", "/b.jpg"]

    odd = os.fsdecode(b"/photos/caf\xe9.jpg")  # a file name that is not UTF-8
    with ResultsFile(out) as results:
        results.write({"path": odd, "sha256": "cc", "memes": []})
    with ResultsFile(out) as results:
        assert results.has(odd, "cc"), "read back as the same path"

    other = tmp_path / "other.jsonl"
    other.write_text('{"something": "else"}\n')
    with pytest.raises(ValueError, match="choose another --out"):
        ResultsFile(other).__enter__()


# ---- the library -----------------------------------------------------------------------------


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize("backend", ["grpc", "inprocess"])
def test_client_encodes_and_generates_with_an_error_per_bad_item(backend, loopback, served_models_dir, folder):
    good = [path.read_bytes() for path in folder["good"][:3]]
    options = DecodingOptions(num_beams=3, num_return_sequences=3)

    async def go():
        if backend == "grpc":
            client = MemePipeline(loopback.target, loopback.target, encoder_max_batch=2)
        else:
            client = MemePipeline(models_dir=served_models_dir)
        async with client:
            assert client.settings.backend == backend
            probs = await client.encode([good[0], b"not an image", good[1], picture(1)[:100]])
            results = await client.generate(
                [good[2], "grumpy cat", Item("broken", image=b"GIF89a"), Item("x", template="nope")], options
            )
            return client.template_names, probs, results

    names, probs, results = run(go())
    assert len(names) == 4
    assert probs[0].shape == (4,) and abs(float(probs[0].sum()) - 1) < 1e-4 and probs[2].shape == (4,)
    assert (probs[1].status, probs[3].status) == (415, 400)
    assert [r.label for r in results] == ["#0", "grumpy cat", "broken", "x"]
    assert len(results[0].response.memes) == 3 and results[1].response.templates[0].name == "Grumpy-Cat"
    assert results[2].error.status == 400 and results[3].error.status == 422


def test_client_batches_images_into_encoder_calls_over_grpc(loopback, folder):
    loopback.reset()
    images = [picture(100 + i) for i in range(12)]

    async def go():
        async with MemePipeline(loopback.target, loopback.target, encoder_max_batch=4) as client:
            loopback.calls.clear()
            return await client.encode(images)

    probs = run(go())
    assert len(probs) == 12 and all(p.shape == (4,) for p in probs)
    sizes = [
        call.batch
        for call in loopback.calls
        if call.model == c.ENCODER_MODEL and call.signature == c.ENCODER_BYTES_SIGNATURE
    ]
    assert sum(sizes) == 12 and max(sizes) > 1 and max(sizes) <= 4, sizes


def test_stream_keeps_to_its_concurrency_and_stops_cleanly(loopback, folder):
    loopback.reset()
    items = [Item(str(path), image=path.read_bytes()) for path in folder["good"]]
    taken = []

    def lazily():
        for item in items:
            taken.append(item.label)
            yield item

    in_flight, most = 0, 0

    async def go():
        async with MemePipeline(loopback.target, loopback.target) as client:
            generate_one = client.generate_one

            async def counted(item, options):
                nonlocal in_flight, most
                in_flight += 1
                most = max(most, in_flight)
                try:
                    return await generate_one(item, options)
                finally:
                    in_flight -= 1

            client.generate_one = counted
            options = DecodingOptions(num_beams=2, num_return_sequences=2)
            labels = [result.label async for result in client.stream(lazily(), options, concurrency=2)]
            assert most == 2, "two at a time, never more"
            taken.clear()
            first = None
            async for result in client.stream(lazily(), options, concurrency=2):
                first = result
                break  # the caller stops: the one still in flight is cancelled, nothing more is read
            return labels, first, list(taken)

    labels, first, taken_then = run(go())
    assert sorted(labels) == sorted(item.label for item in items)
    assert first is not None and len(taken_then) <= 3
    assert in_flight == 0, "stopping early cancelled the one still in flight"


# ---- memefly batch ---------------------------------------------------------------------------


def batch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "memefly.cli", "batch", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
        **kwargs,
    )


def lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "whole lines only"
    return [json.loads(line) for line in text.splitlines()]


def test_batch_over_grpc_writes_each_image_once_with_errors_and_renders(loopback, folder, tmp_path):
    loopback.reset()
    out, rendered = tmp_path / "results.jsonl", tmp_path / "rendered"
    result = batch(
        str(folder["root"][0]),
        "--out",
        str(out),
        "--encoder",
        loopback.target,
        "--decoder",
        loopback.target,
        "--concurrency",
        "3",
        "--batch-size",
        "2",
        "--n",
        "3",
        "--render",
        str(rendered),
        "--no-progress",
    )
    assert result.returncode == 1, result.stderr  # some images were bad, and it says so
    records = lines(out)
    by_path = {Path(r["path"]): r for r in records}
    assert len(records) == len(by_path) == len(folder["good"]) + len(folder["bad"])
    for path in folder["good"]:
        record = by_path[path]
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert len(record["memes"]) == 3 and record["templates"] and record["model"]["backend"] == "grpc"
        assert record["template"]["name"] == record["templates"][0]["name"] and record["template"]["known"] in (
            True,
            False,
        )
        (drawn,) = record["rendered"]
        assert Image.open(drawn).size == Image.open(path).size
    assert by_path[folder["root"][0] / "nested" / "grumpy.jpg"]["templates"][0]["name"] == "Grumpy-Cat"
    statuses = {path.name: by_path[path]["error"]["status"] for path in folder["bad"]}
    assert statuses == {"cut.jpg": 400, "text.png": 415, "empty.gif": 400}
    assert f"{len(records)} images: {len(records)} written (3 errors)" in result.stderr

    again = batch(str(folder["root"][0]), "--out", str(out), "--encoder", loopback.target, "--decoder", loopback.target)
    assert again.returncode == 0, again.stderr
    assert f"0 written (0 errors), {len(records)} already in the results" in again.stderr
    assert lines(out) == records

    (folder["root"][0] / "photo1.jpg").write_bytes(picture(99))  # changed: done again, appended
    changed = batch(
        str(folder["root"][0] / "photo1.jpg"),
        "--out",
        str(out),
        "--models",
        "/nonexistent-unused",
        "--encoder",
        loopback.target,
        "--decoder",
        loopback.target,
    )
    assert changed.returncode == 2 and "not both" in changed.stderr
    changed = batch(
        str(folder["root"][0] / "photo1.jpg"),
        "--out",
        str(out),
        "--encoder",
        loopback.target,
        "--decoder",
        loopback.target,
    )
    assert changed.returncode == 0, changed.stderr
    assert len(lines(out)) == len(records) + 1


def test_batch_interrupted_then_resumed_has_every_image_exactly_once(loopback, folder, tmp_path):
    loopback.reset()
    loopback.set_delay(0.05, c.DECODER_MODEL)  # slow enough to be stopped halfway
    out = tmp_path / "results.jsonl"
    args = [
        str(folder["root"][0]),
        "--out",
        str(out),
        "--encoder",
        loopback.target,
        "--decoder",
        loopback.target,
        "--concurrency",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "memefly.cli", "batch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and out.read_text().count("\n") >= 2):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "no lines written"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted:" in stderr and "carries on" in stderr
    first = lines(out)
    total = len(folder["good"]) + len(folder["bad"])
    assert 2 <= len(first) < total, "stopped halfway"

    loopback.reset()
    resumed = batch(*args)
    assert resumed.returncode == 1, resumed.stderr  # the bad images' errors
    assert "already in the results" in resumed.stderr
    records = lines(out)
    assert records[: len(first)] == first, "appended, nothing rewritten"
    counts = Counter(Path(r["path"]) for r in records)
    assert set(counts) == set(folder["good"] + folder["bad"]) and set(counts.values()) == {1}


def test_batch_does_not_write_model_side_failures_and_retries_them(loopback, folder, tmp_path):
    from memefly.cli.batch_run import BatchSummary, run_batch

    loopback.reset()
    good = folder["good"][:3]
    out = tmp_path / "results.jsonl"
    options = DecodingOptions(num_beams=2, num_return_sequences=2)

    async def go(fail: bool) -> BatchSummary:
        summary = BatchSummary(total=len(good))
        async with MemePipeline(loopback.target, loopback.target, retries=0) as client:
            if fail:  # ready first; then the encoder fails every call
                loopback.fail_next(grpc.StatusCode.INTERNAL, count=1000, model=c.ENCODER_MODEL, rpc="Predict")
            with ResultsFile(out) as results:
                await run_batch(good, results, client, options, summary, concurrency=2)
        return summary

    failed = run(go(fail=True))
    assert len(failed.failed) == 3 and all(" 502: " in f" {why}" for _, why in failed.failed)
    assert failed.written == 0 and lines(out) == [], "a model-side failure is no answer: nothing written"
    loopback.reset()
    done = run(go(fail=False))
    assert done.written == 3 and not done.failed
    assert sorted(Path(r["path"]) for r in lines(out)) == sorted(good)


def test_a_failed_drawing_keeps_the_memes_and_the_batch_goes_on(loopback, folder, tmp_path, font_renderer):
    from memefly.cli.batch_run import BatchSummary, RenderTo, run_batch

    loopback.reset()
    good = folder["good"][:2]
    out = tmp_path / "results.jsonl"
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")

    async def go() -> BatchSummary:
        summary = BatchSummary(total=len(good))
        async with MemePipeline(loopback.target, loopback.target) as client:
            with ResultsFile(out) as results:
                await run_batch(
                    good,
                    results,
                    client,
                    DecodingOptions(num_beams=2, num_return_sequences=2),
                    summary,
                    concurrency=2,
                    render=RenderTo(blocked, font_renderer),
                )
        return summary

    summary = run(go())
    assert summary.written == 2 and summary.render_errors == 2 and not summary.errors
    for record in lines(out):
        assert len(record["memes"]) == 2 and "exists" in record["render_error"] and "rendered" not in record


@pytest.fixture
def font_renderer(tmp_path):
    from gateway.rendering.renderer import Renderer

    return Renderer(cache_bytes=0, templates_dir=tmp_path)


def test_batch_usage_errors(tmp_path):
    assert batch("--out", str(tmp_path / "o.jsonl")).returncode == 2
    missing = batch(
        str(tmp_path / "nope.jpg"),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--encoder",
        "localhost:1",
        "--decoder",
        "localhost:1",
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
    half = batch(str(tmp_path), "--out", str(tmp_path / "o.jsonl"), "--encoder", "localhost:1")
    assert half.returncode == 2 and "both --encoder" in half.stderr


def test_the_pipelines_old_import_still_works_and_says_its_new_name():
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "try:\n"
        "    import gateway.client\n"
        "except DeprecationWarning as warning:\n"
        "    print(warning)\n"
        "warnings.simplefilter('ignore')\n"
        "import gateway.client, gateway.pipeline\n"
        "print(gateway.client.MemeflyClient is gateway.pipeline.MemePipeline)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["gateway.client is now gateway.pipeline, and MemeflyClient is MemePipeline", "True"]
