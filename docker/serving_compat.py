"""Does an older TensorFlow load and run our SavedModels as TF Serving would? (docs/deploy.md, "Image tag")

TF Serving is built on one TensorFlow release, and its Docker images can lag the
TensorFlow that exports the models. This loads each model the way tensorflow_model_server
does (the TF1 SavedModel loader, tag "serve", one Graph and Session), replays the warm-up
requests that the export wrote (what --enable_model_warmup runs before a version is
AVAILABLE), and saves every output. Run it under the exporting TensorFlow and under the
serving one, then compare:

    python docker/serving_compat.py run MODELS_DIR VERSION out-2.21.npz
    /path/to/tf-2.20-venv/bin/python docker/serving_compat.py run MODELS_DIR VERSION out-2.20.npz
    python docker/serving_compat.py compare out-2.21.npz out-2.20.npz

Needs only tensorflow (or tensorflow-cpu) and tensorflow-serving-api (--no-deps is enough),
never project code: the models are seen as a model server sees them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MODELS = ("memefly_encoder", "memefly_decoder")
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"


def run(models_dir: Path, version: int, out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    tf.compat.v1.disable_eager_execution()
    results = {}
    for model in MODELS:
        path = models_dir / model / str(version)
        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
            for index, raw in enumerate(tf.compat.v1.io.tf_record_iterator(str(path / WARMUP))):
                request = prediction_log_pb2.PredictionLog.FromString(raw).predict_log.request
                signature = meta.signature_def[request.model_spec.signature_name]
                feeds = {signature.inputs[name].name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
                names = sorted(signature.outputs)
                values = session.run([signature.outputs[n].name for n in names], feeds)
                for name, value in zip(names, values, strict=True):
                    results[f"{model}/{index}/{request.model_spec.signature_name}/{name}"] = value
        print(f"{model} v{version}: loaded and ran {index + 1} warm-up requests", flush=True)
    np.savez(out, tensorflow=np.array(tf.__version__), **results)


def compare(first: Path, second: Path, tolerance: float = 1e-4) -> int:
    import numpy as np

    a, b = np.load(first, allow_pickle=True), np.load(second, allow_pickle=True)
    print(f"TensorFlow {a['tensorflow']} vs {b['tensorflow']}")
    keys = sorted(set(a.files) - {"tensorflow"})
    if keys != sorted(set(b.files) - {"tensorflow"}):
        print("different outputs: " + ", ".join(sorted(set(a.files) ^ set(b.files))))
        return 1
    worst, mismatched = 0.0, []
    for key in keys:
        x, y = a[key], b[key]
        if x.dtype.kind in "fc":
            difference = float(np.max(np.abs(x - y))) if x.size else 0.0
            worst = max(worst, difference)
            ok = x.shape == y.shape and difference <= tolerance
        else:
            ok = x.shape == y.shape and np.array_equal(x, y)
        if not ok:
            mismatched.append(key)
    print(
        f"{len(keys)} outputs of {len({k.rsplit('/', 1)[0] for k in keys})} warm-up requests: "
        f"largest float difference {worst:.2e}, {len(mismatched)} outside {tolerance:g} or not equal"
    )
    for key in mismatched:
        print(f"  differs: {key}")
    return 1 if mismatched else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="load both models, replay their warm-up requests, save the outputs")
    r.add_argument("models_dir", type=Path)
    r.add_argument("version", type=int)
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare", help="the outputs of two runs: equal, floats within a tolerance")
    c.add_argument("first", type=Path)
    c.add_argument("second", type=Path)
    c.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.models_dir, args.version, args.out)
        return 0
    return compare(args.first, args.second, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
