"""Make a training run the package's default model: `python -m model_export.ship RUN`.

Copies what loading and serving need (settings, vocabulary, templates with their box
counts, the training captions' fingerprints, final weights, the training record) into
model_export/trained/default/, optionally storing the weights as float16, and nothing of the
dataset beyond the vocabulary and template names. The run's metrics come along when the
weights are copied as they are; after a float16 conversion, measure exactly what ships (the
metrics record the weights' fingerprint):

    memefly evaluate model_export/trained/default --prepared data/prepared
    python benchmarks/kn_baseline.py model_export/trained/default
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from memefly import paths
from model_export import run_dir as rd

DEFAULT_DIR = paths.shipped_model()
BASELINE_METRICS = "baseline_metrics.json"  # benchmarks/kn_baseline.py writes it


def ship(run: Path, dest: Path = DEFAULT_DIR, float16: bool = False) -> Path:
    import h5py
    import numpy as np

    run = Path(run)
    weights = run / rd.FINAL_WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"{weights} missing: ship a finished training run")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (rd.VOCABULARY, rd.TEMPLATES, rd.TRAIN_STATS, rd.TRAINING_CAPTIONS):
        if (run / name).exists():  # runs made before caption_stats have no fingerprints
            shutil.copy2(run / name, tmp / name)
    config = json.loads((run / rd.CONFIG).read_text())
    config["prepared"] = "data/prepared"  # the machine it was trained on had its own absolute path
    (tmp / rd.CONFIG).write_text(json.dumps(config, indent=1))
    shutil.copy2(weights, tmp / rd.FINAL_WEIGHTS)
    if not float16:  # the very weights they were measured on (their fingerprint says so)
        for name in (rd.METRICS, BASELINE_METRICS):
            if (run / name).exists():
                metrics = json.loads((run / name).read_text())
                # Generated samples can repeat training captions verbatim: not shipped.
                metrics.pop("samples", None)
                (tmp / name).write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    else:
        with h5py.File(tmp / rd.FINAL_WEIGHTS, "r+") as f:
            arrays = []
            f.visititems(
                lambda name, obj: (
                    arrays.append(name) if isinstance(obj, h5py.Dataset) and obj.dtype == np.float32 else None
                )
            )
            for name in arrays:
                values = f[name][()].astype(np.float16)
                del f[name]
                f.create_dataset(name, data=values)
    rd.load_run(tmp)  # loads as it will be loaded, or fails here
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished `memefly train` run")
    parser.add_argument("--to", type=Path, default=DEFAULT_DIR, help="default: %(default)s")
    parser.add_argument("--float16", action="store_true", help="store the weights as float16 (half the size)")
    args = parser.parse_args(argv)
    try:
        dest = ship(args.run, args.to, args.float16)
    except (OSError, ValueError) as e:  # not a finished run, or its files do not load
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in dest.iterdir())
    measured = (dest / rd.METRICS).exists()
    print(
        f"shipped {args.run} to {dest}: {size / 1e6:.1f} MB; "
        + (
            "with the run's metrics (same weights)"
            if measured
            else f"now run `memefly evaluate {dest}` and the baseline"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
