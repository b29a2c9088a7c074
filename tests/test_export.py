"""`memefly export`: two SavedModels TF Serving can load, verified the way TF Serving loads them."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_export_config
from PIL import Image

from memefly import contract as c
from memefly.cli import main
from model_export import export as export_module
from model_export.augment import KINDS, perturb, to_png
from model_export.export import ExportError, export, utf8, weights_fingerprint
from model_export.non_templates import KINDS as NON_TEMPLATE_KINDS
from model_export.run_dir import load_run
from model_export.template_head import MATCH_WEIGHTS
from model_export.warmup import read_warmup

DECODER_SIGNATURES = {
    c.INIT_SIGNATURE: ({c.TEMPLATE_PROBS}, {c.STATE, c.CONTEXT}),
    c.STEP_SIGNATURE: ({c.TOKEN, c.STATE, c.CONTEXT}, {c.TOP_IDS, c.TOP_LOG_PROBS, c.STATE}),
    c.STEP_FLOAT16_SIGNATURE: ({c.TOKEN, c.STATE, c.CONTEXT}, {c.TOP_IDS, c.TOP_LOG_PROBS, c.STATE}),
    c.VOCABULARY_SIGNATURE: ({c.IDS}, {c.TOKENS}),
    c.TEMPLATES_SIGNATURE: ({c.IDS}, {c.NAMES, c.BOX_COUNTS, c.ALLOWED_BOX_COUNTS}),
    c.TRAINING_CAPTIONS_SIGNATURE: ({c.IDS}, {c.FINGERPRINTS}),
    c.SCORE_SIGNATURE: ({c.TEMPLATE_PROBS, c.TEXT}, {c.LOG_PROB, c.NUM_TOKENS}),
    c.METADATA_SIGNATURE: ({c.KEYS}, {c.VALUES}),
}
ENCODER_SIGNATURES = {
    c.ENCODER_BYTES_SIGNATURE: ({c.IMAGE_BYTES}, {c.FEATURES, c.TEMPLATE_PROBS}),
    c.ENCODER_PIXELS_SIGNATURE: ({c.IMAGES}, {c.FEATURES, c.TEMPLATE_PROBS}),
    c.METADATA_SIGNATURE: ({c.KEYS}, {c.VALUES}),
}


def model_dir(summary, name) -> Path:
    return Path(summary["models"][name])


def tf1_run(model: Path, cases: dict, tmp_path: Path) -> dict:
    """Drive signatures through tf1_check.py in a fresh interpreter that imports no project code
    (export.verify raises with the report unless every signature ran and matched)."""
    return export_module.verify(model, cases, tmp_path)


def test_both_versions_are_written_with_warmup_and_log(tiny_export):
    for name in (c.ENCODER_MODEL, c.DECODER_MODEL):
        version = model_dir(tiny_export, name)
        assert version.name == "1" and (version / "saved_model.pb").exists()
        assert (version / c.WARMUP_FILE).exists()
        assert not list(version.parent.glob(".tmp-*"))
    log = Path(tiny_export["log"]).read_text()
    assert "verified memefly_encoder" in log and "verified memefly_decoder" in log
    assert "signature_def['score']" in log and "signature_def['pixels']" in log  # saved_model_cli show --all
    assert set(tiny_export["recognition_held_out"]) == {*KINDS, "all"}


def test_the_encoder_ships_a_known_template_threshold_checked_on_held_out_images(tiny_export):
    known = tiny_export["known_template"]
    assert tiny_export["metadata"][c.ENCODER_MODEL][c.KNOWN_THRESHOLD] == f"{known['threshold']:.9g}"
    assert 0 < known["threshold"] < 1
    assert set(known["unknown_rate"]) == {*NON_TEMPLATE_KINDS, "all"}
    # Held out (72 views and 24 images here; benchmarks/recognition.py measures the real build):
    # the threshold lets at most 5% of the generated non-templates through (UNKNOWN_RATE), and
    # still calls most views of the four random-weight templates known.
    assert known["unknown_rate"]["all"] >= 0.9, known
    assert known["known_rate"]["all"] >= 0.6, known
    assert (
        known["match_weight"] in MATCH_WEIGHTS
        and tiny_export["metadata"][c.ENCODER_MODEL]["match_weight"] == f"{known['match_weight']:g}"
    )
    assert "known-template threshold" in (Path(tiny_export["log"]).read_text())


def test_tf1_loader_drives_every_decoder_signature(tiny_export, tiny_run, tmp_path):
    run = load_run(tiny_run)
    num_templates, vocab = len(run.templates), len(run.vocabulary)
    probs = np.eye(num_templates, dtype=np.float32)[[0, 1, 1]]
    state, context = (x.numpy() for x in run.model.init(probs))
    tokens = np.array([c.START_ID, 7, 9], np.int32)
    log_probs, new_state = (x.numpy() for x in run.model.step(tokens, state, context))
    cases = {
        "init/in/template_probs": probs,
        "init/out/state": state,
        "init/out/context": context,
        "serving_default/in/token": tokens,
        "serving_default/in/state": state,
        "serving_default/in/context": context,
        "serving_default/out/top_log_probs": -np.sort(-log_probs, axis=1)[:, : c.TOP_K],
        "serving_default/out/state": new_state,
        "vocabulary/in/ids": np.array([0, 1, 2, 3, 4, vocab - 1], np.int32),
        "vocabulary/out/tokens": utf8([*c.SPECIAL_TOKENS, run.vocabulary[-1]]),
        "templates/in/ids": np.arange(num_templates, dtype=np.int32),
        "templates/out/names": utf8(run.template_names),
        "score/in/template_probs": probs[:2],
        "score/in/text": np.array([b"hello there", b"top\nbottom"]),
        "metadata/in/keys": np.array([c.TEMPLATE_FINGERPRINT.encode(), b"nope"]),
    }
    report = tf1_run(model_dir(tiny_export, c.DECODER_MODEL), cases, tmp_path)
    assert set(DECODER_SIGNATURES) <= set(report["signature_names"])
    step = report["signatures"]["serving_default"]
    assert step["top_ids"]["shape"] == [3, min(c.TOP_K, vocab)] and step["top_ids"]["dtype"] == "int32"
    assert report["signatures"]["score"]["num_tokens"]["dtype"] == "int32"
    assert report["signatures"]["templates"]["box_counts"]["dtype"] == "int32"
    assert report["signatures"]["templates"]["allowed_box_counts"]["dtype"] == "int32"


def test_the_decoder_serves_box_counts_and_training_caption_fingerprints(tiny_export, tiny_run):
    """What the gateway's caption rules need travels in the decoder, as the run recorded it."""
    from memefly.decoding.distinct import CaptionSet

    run = load_run(tiny_run)
    assert len(run.training_captions) > 0
    sig = tf.saved_model.load(str(model_dir(tiny_export, c.DECODER_MODEL))).signatures
    out = sig[c.TEMPLATES_SIGNATURE](ids=tf.range(len(run.templates)))
    bits = out[c.ALLOWED_BOX_COUNTS].numpy()
    for template, mask in zip(run.templates, bits, strict=True):
        assert template["box_counts"] and {n for n in range(1, 31) if mask >> n & 1} == set(template["box_counts"])
    rows = -(-len(run.training_captions) // c.FINGERPRINT_ROW)
    served = sig[c.TRAINING_CAPTIONS_SIGNATURE](ids=tf.range(rows))[c.FINGERPRINTS].numpy()
    assert served.shape == (rows, c.FINGERPRINT_ROW)
    served_set = CaptionSet(served.reshape(-1)[: len(run.training_captions)])
    assert np.array_equal(served_set.fingerprints, run.training_captions)


def test_tf1_loader_drives_every_encoder_signature(tiny_export, tiny_dataset, tmp_path):
    image = Image.open(next((tiny_dataset / "dataset" / "templates" / "img").iterdir())).convert("RGB")
    pixels = np.asarray(image.resize((c.IMAGE_SIZE, c.IMAGE_SIZE)))[None]
    cases = {
        "pixels/in/images": pixels,
        "serving_default/in/image_bytes": np.array([to_png(image), to_png(image.resize((50, 80)))]),
        "metadata/in/keys": np.array([c.TEMPLATE_FINGERPRINT.encode()]),
    }
    report = tf1_run(model_dir(tiny_export, c.ENCODER_MODEL), cases, tmp_path)
    assert set(ENCODER_SIGNATURES) <= set(report["signature_names"])
    out = report["signatures"]["serving_default"]
    assert out["features"]["shape"] == [2, c.FEATURE_DIM]
    assert out["template_probs"]["shape"][0] == 2 and out["template_probs"]["dtype"] == "float32"


@pytest.mark.parametrize(
    "name,signatures", [(c.ENCODER_MODEL, ENCODER_SIGNATURES), (c.DECODER_MODEL, DECODER_SIGNATURES)]
)
def test_signatures_match_the_contract_with_no_scalar_inputs(tiny_export, name, signatures):
    loaded = tf.saved_model.load(str(model_dir(tiny_export, name)))
    for signature, (inputs, outputs) in signatures.items():
        fn = loaded.signatures[signature]
        specs = fn.structured_input_signature[1]
        assert set(specs) == inputs, signature
        assert set(fn.structured_outputs) == outputs, signature
        for spec in specs.values():
            assert spec.shape.rank >= 1 and spec.shape[0] is None  # TF Serving batches on dim 0


def test_score_equals_the_sum_of_served_steps(tiny_export, tiny_run):
    run = load_run(tiny_run)
    sig = tf.saved_model.load(str(model_dir(tiny_export, c.DECODER_MODEL))).signatures
    probs = tf.constant(np.eye(len(run.templates), dtype=np.float32)[[1]])
    init = sig[c.INIT_SIGNATURE](template_probs=probs)
    state, context, token = init["state"], init["context"], tf.constant([c.START_ID])
    total, words = 0.0, []
    for _ in range(30):  # follow the 3rd-best word, a caption the model would not pick itself
        out = sig[c.STEP_SIGNATURE](token=token, state=state, context=context)
        candidates = dict(
            zip(out["top_ids"].numpy()[0].tolist(), out["top_log_probs"].numpy()[0].tolist(), strict=True)
        )
        if len(words) >= 3 and c.END_ID in candidates:
            total += candidates[c.END_ID]
            break
        chosen = [i for i in candidates if i > c.SEP_ID][2]  # a plain word
        total += candidates[chosen]
        words.append(run.vocabulary[chosen])
        token, state = tf.constant([chosen], tf.int32), out["state"]
    else:
        pytest.fail("<end> never reached the top-K candidates")
    scored = sig[c.SCORE_SIGNATURE](template_probs=probs, text=tf.constant([" ".join(words)]))
    assert int(scored["num_tokens"][0]) == len(words) + 1
    assert abs(float(scored["log_prob"][0]) - total) < 1e-4


def test_the_float16_step_follows_the_float32_step(tiny_export, tiny_run):
    """Half the bytes on the wire, the same captions: greedy decoding of every template gives the
    same words with the state and context carried as float16, and nearly the same log-probs."""
    run = load_run(tiny_run)
    sig = tf.saved_model.load(str(model_dir(tiny_export, c.DECODER_MODEL))).signatures
    init = sig[c.INIT_SIGNATURE](template_probs=tf.constant(np.eye(len(run.templates), dtype=np.float32)))
    paths = {}
    for name, dtype in ((c.STEP_SIGNATURE, tf.float32), (c.STEP_FLOAT16_SIGNATURE, tf.float16)):
        state, context = tf.cast(init["state"], dtype), tf.cast(init["context"], dtype)
        token, ids, log_probs = tf.fill([len(run.templates)], c.START_ID), [], []
        for _ in range(12):
            out = sig[name](token=token, state=state, context=context)
            assert out["state"].dtype == dtype
            token, state = out["top_ids"][:, 0], out["state"]
            ids.append(token.numpy())
            log_probs.append(out["top_log_probs"][:, 0].numpy())
        paths[name] = (np.stack(ids), np.stack(log_probs))
    (ids32, lp32), (ids16, lp16) = paths[c.STEP_SIGNATURE], paths[c.STEP_FLOAT16_SIGNATURE]
    assert np.array_equal(ids32, ids16)
    assert np.max(np.abs(lp32 - lp16)) < 0.02


def test_bytes_and_pixels_signatures_agree(tiny_export, tiny_dataset):
    encoder = tf.saved_model.load(str(model_dir(tiny_export, c.ENCODER_MODEL)))
    images = [
        Image.open(p).convert("RGB").resize((c.IMAGE_SIZE, c.IMAGE_SIZE))
        for p in sorted((tiny_dataset / "dataset" / "templates" / "img").iterdir())
    ]
    from_bytes = encoder.signatures[c.ENCODER_BYTES_SIGNATURE](image_bytes=tf.constant([to_png(i) for i in images]))
    from_pixels = encoder.signatures[c.ENCODER_PIXELS_SIGNATURE](
        images=tf.constant(np.stack([np.asarray(i) for i in images]))
    )
    for key in (c.FEATURES, c.TEMPLATE_PROBS):
        assert np.abs(from_bytes[key].numpy() - from_pixels[key].numpy()).max() < 1e-5
    assert np.allclose(from_pixels[c.TEMPLATE_PROBS].numpy().sum(axis=1), 1.0, atol=1e-5)


def test_encoder_recognises_new_views_of_its_templates(tiny_export, tiny_dataset, tiny_run):
    import random

    encoder = tf.saved_model.load(str(model_dir(tiny_export, c.ENCODER_MODEL)))
    names = load_run(tiny_run).template_names
    rng = random.Random(12345)  # views the export never fitted on
    views, labels = [], []
    for index, name in enumerate(names):
        image = Image.open(tiny_dataset / "dataset" / "templates" / "img" / f"{name}.jpg")
        for kind in ("crop", "caption", "jpeg"):
            views.append(to_png(perturb(image, kind, rng)))
            labels.append(index)
    probs = encoder.signatures[c.ENCODER_BYTES_SIGNATURE](image_bytes=tf.constant(views))[c.TEMPLATE_PROBS].numpy()
    assert np.mean(probs.argmax(axis=1) == np.array(labels)) >= 0.75  # chance is 0.25


def test_fingerprints_pair_the_models(tiny_export, tiny_run):
    def metadata(name, key):
        loaded = tf.saved_model.load(str(model_dir(tiny_export, name)))
        return loaded.signatures[c.METADATA_SIGNATURE](keys=tf.constant([key]))[c.VALUES].numpy()[0].decode()

    assert metadata(c.ENCODER_MODEL, c.TEMPLATE_FINGERPRINT) == metadata(c.DECODER_MODEL, c.TEMPLATE_FINGERPRINT) != ""
    assert metadata(c.DECODER_MODEL, c.WEIGHTS_FINGERPRINT) == weights_fingerprint(load_run(tiny_run).model)
    assert metadata(c.DECODER_MODEL, c.MODEL_VERSION) == "1"


def test_warmup_requests_are_valid_prediction_logs(tiny_export):
    for name, signatures in ((c.ENCODER_MODEL, ENCODER_SIGNATURES), (c.DECODER_MODEL, DECODER_SIGNATURES)):
        records = read_warmup(model_dir(tiny_export, name))
        assert {log.predict_log.request.model_spec.signature_name for log in records} == set(signatures)
        for log in records:
            request = log.predict_log.request
            assert request.model_spec.name == name
            inputs, _ = signatures[request.model_spec.signature_name]
            assert set(request.inputs) == inputs
            assert len({t.tensor_shape.dim[0].size for t in request.inputs.values()}) == 1  # one batch size per request


def test_existing_version_is_not_overwritten(tiny_export, tiny_run, tiny_dataset, feature_cache):
    models = Path(tiny_export["models"][c.DECODER_MODEL]).parent.parent
    before = (models / c.DECODER_MODEL / "1" / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(ExportError, match="--overwrite"):
        export(tiny_export_config(tiny_run, tiny_dataset, models, feature_cache))
    assert (models / c.DECODER_MODEL / "1" / "saved_model.pb").stat().st_mtime_ns == before


def test_overwrite_replaces_both_models_and_leaves_nothing_aside(
    tiny_run, tiny_dataset, feature_cache, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a relative models folder, as `--models-dir models` gives: verification runs elsewhere
    models = Path("models")
    first = export(tiny_export_config(tiny_run, tiny_dataset, models, feature_cache, version=2))
    stamps = {name: (Path(path) / "saved_model.pb").stat().st_mtime_ns for name, path in first["models"].items()}
    export(tiny_export_config(tiny_run, tiny_dataset, models, feature_cache, version=2, overwrite=True))
    for name in (c.ENCODER_MODEL, c.DECODER_MODEL):
        assert sorted(p.name for p in (tmp_path / "models" / name).iterdir()) == ["2"]  # no .old-*, no .tmp-*
        assert (tmp_path / "models" / name / "2" / "saved_model.pb").stat().st_mtime_ns > stamps[name]


def test_a_failed_export_leaves_no_version_behind(tiny_run, tiny_dataset, feature_cache, tmp_path, monkeypatch):
    def broken_verify(*args, **kwargs):
        raise ExportError("simulated verification failure")

    monkeypatch.setattr(export_module, "verify", broken_verify)
    with pytest.raises(ExportError, match="simulated"):
        export(tiny_export_config(tiny_run, tiny_dataset, tmp_path, feature_cache, version=3))
    for name in (c.ENCODER_MODEL, c.DECODER_MODEL):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == []  # no "3", no .tmp-*


def test_cli_names_the_setting_for_missing_template_images(tiny_run, tmp_path, capsys):
    code = main(
        [
            "export",
            "--run",
            str(tiny_run),
            "--version",
            "1",
            "--weights",
            "random",
            "--templates-dir",
            str(tmp_path),
            "--models-dir",
            str(tmp_path / "models"),
        ]
    )
    assert code == 2
    assert "--templates-dir" in capsys.readouterr().err


def test_warmup_steps_cover_the_decoder_batch_sizes(tiny_export):
    from model_export.warmup import DECODER_BATCH_SIZES, ENCODER_BATCH_SIZES

    def sizes(name, signature):
        return {
            next(iter(log.predict_log.request.inputs.values())).tensor_shape.dim[0].size
            for log in read_warmup(model_dir(tiny_export, name))
            if log.predict_log.request.model_spec.signature_name == signature
        }

    assert sizes(c.DECODER_MODEL, c.STEP_SIGNATURE) == set(DECODER_BATCH_SIZES)
    assert sizes(c.DECODER_MODEL, c.STEP_FLOAT16_SIGNATURE) == set(DECODER_BATCH_SIZES)
    assert sizes(c.ENCODER_MODEL, c.ENCODER_BYTES_SIGNATURE) == set(ENCODER_BATCH_SIZES)


@pytest.mark.parametrize("vocabulary, k", [(12_000, 64), (5_000, 64), (4_097, 32), (300, 64), (64, 64)])
def test_served_top_k_is_exactly_tensorflows(vocabulary, k):
    import tensorflow as tf

    from model_export.decoder_serving import top_k

    values = tf.random.stateless_normal([37, vocabulary], seed=[vocabulary, k])
    got_values, got_ids = top_k(values, k)
    want = tf.math.top_k(values, k=k)
    np.testing.assert_array_equal(got_values.numpy(), want.values.numpy())
    np.testing.assert_array_equal(got_ids.numpy(), want.indices.numpy())
    # Every top element in one chunk (the worst case for the chunk bound) still comes out right.
    n = min(k, vocabulary)
    crowded = tf.tensor_scatter_nd_update(values, [[0, i] for i in range(n)], 100.0 + tf.range(n, dtype=tf.float32))
    np.testing.assert_array_equal(top_k(crowded, k)[1].numpy()[0], tf.math.top_k(crowded, k=k).indices.numpy()[0])


def test_fewer_test_views_than_kinds_still_test_every_kind_about_equally():
    from collections import Counter

    from model_export.augment import KINDS
    from model_export.export import _kinds_in_turn

    counts = Counter(kind for index in range(88) for kind in _kinds_in_turn(index, 2))  # the first start's
    assert set(counts) == set(KINDS) and max(counts.values()) - min(counts.values()) <= 1
    assert Counter(_kinds_in_turn(5, 18)) == Counter({kind: 2 for kind in KINDS})  # `memefly export`'s: 2 of each
