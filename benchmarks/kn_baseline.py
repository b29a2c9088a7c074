"""The per-template Kneser-Ney bigram baseline against a run's metrics (model_export/kn_baseline.py).

python benchmarks/kn_baseline.py runs/small
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model_export.kn_baseline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
