"""`memefly export`: a training run + InceptionV3 -> ROOT/memefly_{encoder,decoder}/<version>/.

Both models get the same version. Everything is written into hidden temporary folders next
to the final ones and renamed at the very end, after the fresh-process TF1 verification
passed, so TF Serving (which watches for numeric folder names) never sees half a version.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memefly import contract as c
from memefly import paths
from model_export.augment import to_png
from model_export.run_dir import template_fingerprint, weights_fingerprint
from model_export.warmup import DECODER_BATCH_SIZES, ENCODER_BATCH_SIZES, write_warmup

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


@dataclass
class ExportConfig:
    run: str | Path  # a training run directory
    models_dir: str
    version: int
    weights: str = "imagenet"  # "imagenet", a no-top weights file, or "random"
    seed: int = 0
    templates_dir: str = field(default_factory=lambda: str(paths.dataset_dir() / "dataset" / "templates" / "img"))
    overwrite: bool = False
    fit_views: int = 20  # per template: the original image + perturbed views
    calibration_views: int = 6  # per template, for ridge strength and temperature
    test_views: int = 18  # per template, the perturbation kinds in turn, for the printed accuracy
    # Images that are no template (model_export/non_templates.py): as many again held out.
    non_template_views: int = 120
    top_k: int = c.TOP_K
    cache_dir: str | None = None
    progress: bool = True
    describe: bool = True  # `saved_model_cli show --all` of both models into the export log
    # Extra files for both versions' assets.extra/ (TF Serving ignores them): written before
    # the swap-in, so they appear together with the models or not at all.
    extra_assets: dict[str, str] = field(default_factory=dict)


class ExportError(Exception):
    pass


def find_template_images(names: list[str], templates_dir: Path) -> dict[str, Path]:
    found = {}
    for name in names:
        for ext in IMAGE_EXTENSIONS:
            if (templates_dir / f"{name}{ext}").exists():
                found[name] = templates_dir / f"{name}{ext}"
                break
    missing = [n for n in names if n not in found]
    if missing:
        raise ExportError(
            f"{len(missing)} template images missing in {templates_dir} (e.g. {', '.join(missing[:5])}); "
            "point --templates-dir or MEMEFLY_TEMPLATES_DIR at the folder holding <TemplateName>.jpg|png "
            "for every template of the run, or fetch them with `memefly data download`"
        )
    return found


def _views(
    images: dict[str, Image.Image], names: list[str], count_kinds, seed: int
) -> tuple[list[bytes], list[int], list[str]]:
    """Encoded perturbed views: (bytes, template index, kind). count_kinds(rng, index) yields a
    template's kinds."""
    from model_export.augment import perturb

    data, labels, kinds = [], [], []
    for index, name in enumerate(names):
        rng = random.Random(f"{seed}:{name}")
        for kind in count_kinds(rng, index):
            view = images[name] if kind == "original" else perturb(images[name], kind, rng)
            data.append(to_png(view))
            labels.append(index)
            kinds.append(kind)
    return data, labels, kinds


def _unseen(
    views: tuple[list[bytes], list[int], list[str]], fitted: set[bytes]
) -> tuple[list[bytes], list[int], list[str]]:
    data, labels, kinds = views
    keep = [i for i, view in enumerate(data) if hashlib.sha256(view).digest() not in fitted]
    return [data[i] for i in keep], [labels[i] for i in keep], [kinds[i] for i in keep]


def _kinds_in_turn(index: int, count: int) -> list[str]:
    """COUNT perturbation kinds for template INDEX, going on where the template before stopped:
    every kind is tested equally often (within one), even with fewer test views than kinds."""
    from model_export.augment import KINDS

    return [KINDS[(index * count + j) % len(KINDS)] for j in range(count)]


def encode_as_served(extractor, matcher, images: list[bytes], progress: bool, desc: str):
    """Features and pixel match of IMAGES and of the picture inside each, where the gateway
    finds one (memefly/content_view.py): the views the served answer is chosen from."""
    from PIL import Image

    from memefly.content_view import content_view
    from model_export.template_head import Encoded

    # The gateway looks for the picture after EXIF rotation and conversion to RGB; these views
    # are RGB PNGs already, so opening them is the same.
    inside = [content_view(Image.open(io.BytesIO(data))) for data in images]
    extra = [(index, view) for index, view in enumerate(inside) if view is not None]
    views = list(images) + [view for _, view in extra]
    return Encoded(
        extractor(views, progress, desc),
        matcher(views),
        np.array(list(range(len(images))) + [index for index, _ in extra]),
    )


def fit_head(extractor, matcher, images, names, config: ExportConfig, log):
    """The template head, fused with the pixel match (template_head.py), and its known-template
    threshold: fitted on augmented views; calibrated on others, as the gateway sends them,
    against generated images that are no template; checked on held-out ones of each."""
    from model_export.augment import KINDS, to_png
    from model_export.non_templates import non_template_images
    from model_export.template_head import (
        TEMPERATURES,
        choose_match_weight,
        fit_template_head,
        known_score,
        served_probs,
    )

    if config.non_template_views < 1:
        raise ExportError("--non-template-views must be at least 1: the known-template threshold is chosen on them")
    fit = _views(
        images,
        names,
        lambda rng, _: ["original"] + [rng.choice(KINDS) for _ in range(config.fit_views - 1)],
        config.seed,
    )
    # Held-out means held out: a calibration or test view identical to a fitted one is dropped.
    fitted = {hashlib.sha256(b).digest() for b in fit[0]}
    calib = _unseen(
        _views(
            images, names, lambda rng, _: [rng.choice(KINDS) for _ in range(config.calibration_views)], config.seed + 1
        ),
        fitted,
    )
    test = _unseen(
        _views(images, names, lambda _, index: _kinds_in_turn(index, config.test_views), config.seed + 2), fitted
    )
    templates = [images[n] for n in names]
    calib_other = non_template_images(config.non_template_views, config.seed + 3, templates)
    test_other = non_template_images(config.non_template_views, config.seed + 4, templates)

    def served(data, desc):
        return encode_as_served(extractor, matcher, data, config.progress, desc)

    fit_x = extractor(fit[0], config.progress, "features (fit views)")
    calib_served = served(calib[0], "features (calibration views as served)")
    test_served = served(test[0], "features (held-out views as served)")
    calib_other_served = served([to_png(i) for _, i in calib_other], "features (non-templates)")
    test_other_served = served([to_png(i) for _, i in test_other], "features (held-out non-templates)")
    head = fit_template_head(fit_x, np.array(fit[1]), calib_served.own_features, np.array(calib[1]), len(names))
    if head.temperature in (TEMPERATURES[0], TEMPERATURES[-1]):
        log(f"warning: the calibrated temperature {head.temperature:.3g} is at the edge of the search grid")
    head.match_weight, threshold = choose_match_weight(head, calib_served, np.array(calib[1]), calib_other_served)

    test_probs = served_probs(head, test_served)
    predicted = test_probs.argmax(axis=1)
    labels, kinds = np.array(test[1]), np.array(test[2])
    accuracy = {k: float(np.mean(predicted[kinds == k] == labels[kinds == k])) for k in KINDS if np.any(kinds == k)}
    accuracy["all"] = float(np.mean(predicted == labels))
    features_only = float(np.mean(head.logits(test_served.own_features).argmax(axis=1) == labels))
    log(
        f"template head: temperature {head.temperature:.4g}, pixel-match weight {head.match_weight:g}, fitted on "
        f"{len(fit[0])} views, calibrated on {len(calib[0])}, tested on {len(test[0])} held-out views"
    )
    log(
        "recognition on held-out views, as served: "
        + "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
        + f"  (features of the view alone: {features_only:.3f})"
    )

    known = known_score(test_probs) >= threshold
    other_kinds = np.array([kind for kind, _ in test_other])
    unknown = known_score(served_probs(head, test_other_served)) < threshold
    report: dict[str, Any] = {
        "threshold": threshold,
        "match_weight": head.match_weight,
        "known_rate": {str(k): float(known[kinds == k].mean()) for k in dict.fromkeys(kinds)},
        "unknown_rate": {str(k): float(unknown[other_kinds == k].mean()) for k in dict.fromkeys(other_kinds)},
    }
    report["known_rate"]["all"], report["unknown_rate"]["all"] = float(known.mean()), float(unknown.mean())
    log(
        f"known-template threshold {threshold:.6g} (top probability), chosen on {len(calib[0])} views and "
        f"{config.non_template_views} non-template images"
    )
    log("held-out views called known: " + "  ".join(f"{k} {v:.3f}" for k, v in report["known_rate"].items()))
    log(
        "held-out non-templates called unknown: " + "  ".join(f"{k} {v:.3f}" for k, v in report["unknown_rate"].items())
    )
    return head, accuracy, report


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _metadata_case(metadata: dict) -> dict:
    """The `metadata` signature's case: every key, plus an unknown one that must answer ""."""
    keys = utf8(sorted(metadata) + ["no such key"])
    return {
        f"{c.METADATA_SIGNATURE}/in/{c.KEYS}": keys,
        f"{c.METADATA_SIGNATURE}/out/{c.VALUES}": utf8(metadata.get(k.decode(), "") for k in keys),
    }


def _encoder_cases(backbone, head, descriptors, images: list, metadata: dict) -> tuple[dict, list]:
    """Inputs and expected outputs, computed with the Keras backbone, the pixel match in eager
    TensorFlow and the numpy head."""
    from model_export.template_match import match_scores

    pixels = np.stack([np.asarray(img.convert("RGB").resize((c.IMAGE_SIZE, c.IMAGE_SIZE))) for img in images]).astype(
        np.uint8
    )
    features = backbone.predict(pixels.astype(np.float32) / 127.5 - 1.0, verbose=0)
    match = match_scores(pixels.astype(np.float32), descriptors).numpy()
    probs = head.probs(features.astype(np.float64), match.astype(np.float64))
    encoded = np.array([to_png(img.convert("RGB").resize((c.IMAGE_SIZE, c.IMAGE_SIZE))) for img in images], dtype=bytes)
    cases = {
        f"{c.ENCODER_PIXELS_SIGNATURE}/in/{c.IMAGES}": pixels,
        f"{c.ENCODER_PIXELS_SIGNATURE}/out/{c.FEATURES}": features,
        f"{c.ENCODER_PIXELS_SIGNATURE}/out/{c.TEMPLATE_PROBS}": probs,
        f"{c.ENCODER_BYTES_SIGNATURE}/in/{c.IMAGE_BYTES}": encoded,
        f"{c.ENCODER_BYTES_SIGNATURE}/out/{c.FEATURES}": features,
        f"{c.ENCODER_BYTES_SIGNATURE}/out/{c.TEMPLATE_PROBS}": probs,
        **_metadata_case(metadata),
    }
    # A small JPEG per row keeps the file small; the graph resizes it to 299x299 all the same.
    small = _jpeg(images[0].convert("RGB").resize((64, 64)))
    warmup = [
        (c.ENCODER_BYTES_SIGNATURE, {c.IMAGE_BYTES: np.array([small] * n, dtype=object)}) for n in ENCODER_BATCH_SIZES
    ]
    # The pixels signature shares every convolution with serving_default; two sizes suffice.
    warmup += [(c.ENCODER_PIXELS_SIGNATURE, {c.IMAGES: np.resize(pixels, (n, *pixels.shape[1:]))}) for n in (1, 8)]
    warmup.append((c.METADATA_SIGNATURE, {c.KEYS: cases[f"{c.METADATA_SIGNATURE}/in/{c.KEYS}"]}))
    return cases, warmup


def _decoder_cases(run, top_k: int, metadata: dict, seed: int) -> tuple[dict, list]:
    """Inputs and expected outputs, computed with the Keras decoder (teacher-forced for score)."""
    import tensorflow as tf

    from model_export.decoder_serving import allowed_box_count_bits, fingerprint_rows

    rng = np.random.default_rng(seed)
    model, num_templates, vocab = run.model, len(run.templates), len(run.vocabulary)
    probs = np.concatenate(
        [
            np.eye(num_templates, dtype=np.float32)[rng.integers(0, num_templates, 3)],
            rng.dirichlet(np.ones(num_templates), size=3).astype(np.float32),
        ]
    )
    state, context = (x.numpy() for x in model.init(probs))
    token = rng.integers(1, vocab, size=len(probs)).astype(np.int32)
    texts = ["", "when you see it", "top text\nbottom text!", "zzqx unknownword <sep> 42", "a\n\nb", "ok"]
    score_probs = probs[: len(texts)]
    ids = run.tokenizer.encode(tf.constant(texts))
    inputs = tf.concat([tf.fill([len(texts), 1], c.START_ID), ids], axis=1).to_tensor(0)
    targets = tf.concat([ids, tf.fill([len(texts), 1], c.END_ID)], axis=1).to_tensor(0)
    logits = model({"template_probs": score_probs, "tokens": inputs})
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits).numpy() * (targets.numpy() != 0)
    vocab_ids = np.arange(min(vocab, 12), dtype=np.int32)
    template_ids = np.arange(num_templates, dtype=np.int32)
    metadata_case = _metadata_case(metadata)
    fingerprints = fingerprint_rows(run.training_captions)
    cases = {
        f"{c.INIT_SIGNATURE}/in/{c.TEMPLATE_PROBS}": probs,
        f"{c.INIT_SIGNATURE}/out/{c.STATE}": state,
        f"{c.INIT_SIGNATURE}/out/{c.CONTEXT}": context,
        **_step_case(c.STEP_SIGNATURE, np.float32, model, token, state, context, top_k),
        **_step_case(c.STEP_FLOAT16_SIGNATURE, np.float16, model, token, state, context, top_k),
        f"{c.VOCABULARY_SIGNATURE}/in/{c.IDS}": vocab_ids,
        f"{c.VOCABULARY_SIGNATURE}/out/{c.TOKENS}": utf8(run.vocabulary[i] for i in vocab_ids),
        f"{c.TEMPLATES_SIGNATURE}/in/{c.IDS}": template_ids,
        f"{c.TEMPLATES_SIGNATURE}/out/{c.NAMES}": utf8(run.template_names),
        f"{c.TEMPLATES_SIGNATURE}/out/{c.BOX_COUNTS}": np.array([t["box_count"] or 1 for t in run.templates], np.int32),
        f"{c.TEMPLATES_SIGNATURE}/out/{c.ALLOWED_BOX_COUNTS}": np.array(
            allowed_box_count_bits(run.templates), np.int32
        ),
        f"{c.TRAINING_CAPTIONS_SIGNATURE}/in/{c.IDS}": np.arange(len(fingerprints), dtype=np.int32),
        f"{c.TRAINING_CAPTIONS_SIGNATURE}/out/{c.FINGERPRINTS}": fingerprints,
        f"{c.SCORE_SIGNATURE}/in/{c.TEMPLATE_PROBS}": score_probs,
        f"{c.SCORE_SIGNATURE}/in/{c.TEXT}": utf8(texts),
        f"{c.SCORE_SIGNATURE}/out/{c.LOG_PROB}": -nll.sum(axis=1),
        f"{c.SCORE_SIGNATURE}/out/{c.NUM_TOKENS}": (ids.row_lengths().numpy() + 1).astype(np.int32),
        **metadata_case,
    }
    hidden, ctx = state.shape[1], context.shape[1]
    warmup = [
        (c.INIT_SIGNATURE, {c.TEMPLATE_PROBS: np.resize(probs, (n, num_templates))}) for n in DECODER_BATCH_SIZES[:3]
    ]
    for beams in DECODER_BATCH_SIZES:  # continuous batching sends every live beam in one step call
        for signature, dtype in ((c.STEP_SIGNATURE, np.float32), (c.STEP_FLOAT16_SIGNATURE, np.float16)):
            warmup.append(
                (
                    signature,
                    {
                        c.TOKEN: np.full(beams, c.START_ID, np.int32),
                        c.STATE: np.resize(state, (beams, hidden)).astype(dtype),
                        c.CONTEXT: np.resize(context, (beams, ctx)).astype(dtype),
                    },
                )
            )
    smallest = DECODER_BATCH_SIZES[0]
    warmup += [
        (c.VOCABULARY_SIGNATURE, {c.IDS: np.arange(smallest, dtype=np.int32) % vocab}),
        (c.TEMPLATES_SIGNATURE, {c.IDS: np.arange(smallest, dtype=np.int32) % num_templates}),
        (c.TRAINING_CAPTIONS_SIGNATURE, {c.IDS: np.arange(smallest, dtype=np.int32) % len(fingerprints)}),
        (
            c.SCORE_SIGNATURE,
            {
                c.TEMPLATE_PROBS: np.resize(score_probs, (smallest, num_templates)),
                c.TEXT: np.resize(utf8(texts), smallest),
            },
        ),
        (c.METADATA_SIGNATURE, {c.KEYS: np.resize(metadata_case[f"{c.METADATA_SIGNATURE}/in/{c.KEYS}"], smallest)}),
    ]
    return cases, warmup


def _step_case(name: str, wire_dtype, model, token, state, context, top_k: int) -> dict:
    """A step signature's case: its state and context in WIRE_DTYPE (float16 rounds them), the
    step in float32, the new state back in WIRE_DTYPE."""
    state, context = state.astype(wire_dtype), context.astype(wire_dtype)
    log_probs, new_state = (x.numpy() for x in model.step(token, state.astype(np.float32), context.astype(np.float32)))
    top_ids = np.argsort(-log_probs, axis=1, kind="stable")[:, :top_k]
    return {
        f"{name}/in/{c.TOKEN}": token,
        f"{name}/in/{c.STATE}": state,
        f"{name}/in/{c.CONTEXT}": context,
        f"{name}/out/{c.TOP_IDS}": top_ids.astype(np.int32),
        f"{name}/out/{c.TOP_LOG_PROBS}": np.take_along_axis(log_probs, top_ids, axis=1),
        f"{name}/out/{c.STATE}": new_state.astype(wire_dtype),
    }


def verify(model_dir: Path, cases: dict, work: Path, atol: float = 1e-4) -> dict:
    """Run tf1_check.py in a fresh interpreter (no project code) against expected outputs."""
    model_dir, work = Path(model_dir).resolve(), Path(work).resolve()  # it runs in WORK: relative paths would miss
    cases_path = work / f"{model_dir.name}-cases.npz"
    np.savez(cases_path, **cases)
    script = Path(__file__).with_name("tf1_check.py")
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(cases_path), "--atol", str(atol)],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise ExportError(f"verification of {model_dir} crashed:\n{result.stderr[-3000:]}") from None
    if result.returncode != 0 or not report.get("ok"):
        raise ExportError(f"verification of {model_dir} failed:\n{json.dumps(report, indent=1)}")
    return report


def saved_model_cli_show(model_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", str(model_dir), "--all"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return result.stdout + (f"\n(stderr)\n{result.stderr[-2000:]}" if result.returncode else "")


def utf8(strings) -> np.ndarray:
    """Strings as a bytes array for npz and tensor protos (numpy's bytes dtype is ASCII-only)."""
    return np.array([s.encode("utf-8") for s in strings], dtype=object).astype(bytes)


def _swap_in(tmp: dict[str, Path], finals: dict[str, Path]) -> None:
    """Put both new versions in place together: old ones (--overwrite) are moved aside first
    and restored if a rename fails, so the pair on disk is always old+old or new+new."""
    aside = {
        name: final.with_name(f".old-{final.name}-{int(time.time() * 1000)}")
        for name, final in finals.items()
        if final.exists()
    }
    for name, path in aside.items():
        finals[name].rename(path)
    moved = []
    try:
        for name, final in finals.items():
            tmp[name].rename(final)
            moved.append(name)
    except OSError:
        for name in moved:
            finals[name].rename(tmp[name])
        for name, path in aside.items():
            path.rename(finals[name])
        raise
    for path in aside.values():
        shutil.rmtree(path, ignore_errors=True)


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export(config: ExportConfig) -> dict:
    import tensorflow as tf
    from PIL import Image

    from model_export.decoder_serving import DecoderServing
    from model_export.encoder import EncoderServing, FeatureExtractor, MatchScorer, build_backbone, weights_id
    from model_export.run_dir import load_run
    from model_export.template_match import template_descriptors

    started = time.perf_counter()
    root = Path(config.models_dir)
    lines: list[str] = []

    def log(message: str) -> None:
        lines.append(message)
        print(message, flush=True)

    finals = {name: root / name / str(config.version) for name in (c.ENCODER_MODEL, c.DECODER_MODEL)}
    existing = [str(p) for p in finals.values() if p.exists()]
    if existing and not config.overwrite:
        raise ExportError(
            f"version {config.version} exists ({', '.join(existing)}): pass --overwrite or another --version"
        )

    run = load_run(config.run)
    names = run.template_names
    images = {
        n: Image.open(p).convert("RGB") for n, p in find_template_images(names, Path(config.templates_dir)).items()
    }
    wid = weights_id(config.weights, config.seed)
    shared = {
        c.TEMPLATE_FINGERPRINT: template_fingerprint(names),
        c.MODEL_VERSION: str(config.version),
        c.NUM_TEMPLATES: str(len(names)),
    }
    log(f"export v{config.version}: run {run.path}, {len(names)} templates, encoder weights {wid}")

    backbone = build_backbone(config.weights, config.seed)
    extractor = FeatureExtractor(backbone, wid, config.cache_dir)
    descriptors = template_descriptors([images[n] for n in names])
    head, accuracy, known = fit_head(extractor, MatchScorer(descriptors), images, names, config, log)

    encoder_meta = {
        **shared,
        "encoder_weights": wid,
        "head_temperature": f"{head.temperature:.6g}",
        "match_weight": f"{head.match_weight:g}",
        c.KNOWN_THRESHOLD: f"{known['threshold']:.9g}",
    }
    decoder_meta = {
        **shared,
        c.WEIGHTS_FINGERPRINT: weights_fingerprint(run.model),
        "top_k": str(min(config.top_k, len(run.vocabulary))),
        "vocabulary_size": str(len(run.vocabulary)),
        c.TRAINING_CAPTIONS: str(len(run.training_captions)),
        c.WIRE_DTYPES: "float32,float16",
    }
    encoder = EncoderServing(backbone, head, descriptors, encoder_meta)
    decoder = DecoderServing(run.model, run.tokenizer, run.templates, decoder_meta, config.top_k, run.training_captions)

    for name in finals:
        (root / name).mkdir(parents=True, exist_ok=True)
    tmp = {name: root / name / f".tmp-v{config.version}-{int(time.time() * 1000)}" for name in finals}
    try:
        tf.saved_model.save(
            encoder,
            str(tmp[c.ENCODER_MODEL]),
            signatures={
                c.ENCODER_BYTES_SIGNATURE: encoder.serve_bytes,
                c.ENCODER_PIXELS_SIGNATURE: encoder.serve_pixels,
                c.METADATA_SIGNATURE: encoder.metadata,
            },
        )
        tf.saved_model.save(decoder, str(tmp[c.DECODER_MODEL]), signatures=decoder.signatures())

        sample_images = [images[n] for n in names[:2]] + [
            Image.fromarray(np.random.default_rng(config.seed).integers(0, 256, (120, 90, 3), dtype=np.uint8))
        ]
        encoder_cases, encoder_warmup = _encoder_cases(backbone, head, descriptors, sample_images, encoder_meta)
        decoder_cases, decoder_warmup = _decoder_cases(run, decoder.top_k, decoder_meta, config.seed)
        write_warmup(tmp[c.ENCODER_MODEL], c.ENCODER_MODEL, encoder_warmup)
        write_warmup(tmp[c.DECODER_MODEL], c.DECODER_MODEL, decoder_warmup)
        for path in tmp.values():
            for name, text in config.extra_assets.items():
                (path / "assets.extra" / name).write_text(text)

        reports = {}
        for name, cases in ((c.ENCODER_MODEL, encoder_cases), (c.DECODER_MODEL, decoder_cases)):
            reports[name] = verify(tmp[name], cases, root / name)
            worst = max(
                (
                    o.get("max_abs_diff", 0.0)
                    for s in reports[name]["signatures"].values()
                    for o in s.values()
                    if isinstance(o, dict)
                ),
                default=0.0,
            )
            log(
                f"verified {name} with the TF1 session loader in a fresh process: "
                f"{len(reports[name]['signatures'])} signatures, max abs diff {worst:.2e}"
            )
        cli = {name: saved_model_cli_show(tmp[name]) for name in finals} if config.describe else {}

        _swap_in(tmp, finals)
    finally:
        for path in tmp.values():
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
        for name in finals:
            for leftover in (root / name).glob("*-cases.npz"):
                leftover.unlink()

    summary = {
        "version": config.version,
        "models": {name: str(path) for name, path in finals.items()},
        "sizes_bytes": {name: directory_size(path) for name, path in finals.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "recognition_held_out": accuracy,
        "known_template": known,
        "metadata": {c.ENCODER_MODEL: encoder_meta, c.DECODER_MODEL: decoder_meta},
        "config": asdict(config),
    }
    for name, size in summary["sizes_bytes"].items():
        log(f"{name} v{config.version}: {size / 1e6:.1f} MB at {finals[name]}")
    log(f"export took {summary['seconds']} s")
    log_dir = root / "logs"
    log_dir.mkdir(exist_ok=True)
    text = "\n".join(lines) + "\n\nsummary:\n" + json.dumps(summary, indent=1)
    text += "\n\nverification:\n" + json.dumps(reports, indent=1)
    for name, out in cli.items():
        text += f"\n\nsaved_model_cli show --all ({name}):\n{out}"
    (log_dir / f"export-v{config.version}.log").write_text(text)
    summary["log"] = str(log_dir / f"export-v{config.version}.log")
    return summary
