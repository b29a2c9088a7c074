"""The per-template Kneser-Ney bigram baseline against a run's metrics (model_export/kn_baseline.py).

python benchmarks/kn_baseline.py runs/small [--prepared DIR] [--per-template 20] [--max-test N] [--seed 0]
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gateway.rendering.layout import Layouts  # noqa: E402
from model_export.kn_baseline import compare  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a training run directory (its vocabulary, templates and data)")
    parser.add_argument("--prepared", help="prepared captions (default: the run's own)")
    parser.add_argument("--per-template", type=int, default=20)
    parser.add_argument("--max-test", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(compare(args.run, Layouts.shipped().panels, args.prepared, args.per_template, args.max_test, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
