"""Load a SavedModel the way TF Serving does and run signatures by their tensor names.

Standalone on purpose: it imports TensorFlow and NumPy only, never project code, and runs in
a fresh process, so it sees exactly what a model server sees.

    python tf1_check.py MODEL_DIR CASES.npz [--atol 1e-4]

CASES.npz holds, per case, "<signature>/in/<input name>" arrays and optionally
"<signature>/out/<output name>" expected arrays (the same case key may repeat with a
"#k" suffix on the signature: "score#2/in/text"). Prints one JSON report; exit code 1 if
any signature fails to run or differs by more than --atol.
"""

import argparse
import json
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import tensorflow as tf


def run(model_dir: str, cases_path: str, atol: float) -> dict[str, Any]:
    # case -> "in" or "out" -> tensor name -> array
    cases: defaultdict[str, dict[str, dict[str, np.ndarray]]] = defaultdict(lambda: {"in": {}, "out": {}})
    with np.load(cases_path) as data:
        for key in data.files:
            case, kind, name = key.split("/", 2)
            cases[case][kind][name] = data[key]

    report: dict[str, Any] = {"model": model_dir, "signatures": {}, "ok": True}
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], model_dir)
        report["signature_names"] = sorted(meta.signature_def)
        for case, io in sorted(cases.items()):
            signature = case.split("#")[0]
            entry = report["signatures"].setdefault(case, {})
            if signature not in meta.signature_def:
                entry["error"] = "no such signature"
                report["ok"] = False
                continue
            sig = meta.signature_def[signature]
            missing = set(sig.inputs) - set(io["in"])
            if missing:
                entry["error"] = f"case lacks inputs {sorted(missing)}"
                report["ok"] = False
                continue
            feed = {sig.inputs[name].name: value for name, value in io["in"].items()}
            names = sorted(sig.outputs)
            try:
                values = sess.run([sig.outputs[n].name for n in names], feed_dict=feed)
            except Exception as e:  # report, don't crash: the report says which signature broke
                entry["error"] = f"{type(e).__name__}: {e}"[:500]
                report["ok"] = False
                continue
            for name, value in zip(names, values, strict=True):
                out: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
                if name in io["out"]:
                    expected = io["out"][name]
                    if value.dtype.kind in "SUO":
                        out["equal"] = bool(np.array_equal(value.astype(bytes), expected.astype(bytes)))
                    else:
                        difference = np.abs(value.astype(np.float64) - expected)
                        out["max_abs_diff"] = float(np.max(difference)) if value.size else 0.0
                        # float16 outputs: the float32 results they round may differ in the last
                        # bits, so allow one float16 step of the expected value as well.
                        slack = (
                            np.abs(np.spacing(expected.astype(np.float16))).astype(np.float64)
                            if value.dtype == np.float16
                            else 0.0
                        )
                        out["equal"] = bool(np.all(difference <= atol + slack))
                    report["ok"] &= out["equal"]
                entry[name] = out
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("cases")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args()
    report = run(args.model_dir, args.cases, args.atol)
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
