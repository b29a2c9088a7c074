"""What the gateway image runs (`memefly serve`, `memefly batch` over gRPC) imports no
TensorFlow, no training code, and no package missing from docker/gateway-requirements.txt."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

# In a fresh interpreter: `tensorflow` is an empty package, as in the gateway image (whose
# extracted TF Serving protos have an empty tensorflow/__init__.py), so only the generated
# proto modules can load. Then everything the two commands import, and the distributions
# those modules come from.
CHECK = """
import importlib.metadata, importlib.util, json, sys, types
spec = importlib.util.find_spec("tensorflow")
stub = types.ModuleType("tensorflow")
stub.__path__ = list(spec.submodule_search_locations)
sys.modules["tensorflow"] = stub
# Not in the gateway image: numba imports them only where they are installed (its config
# file's reader, its BLAS check, its cffi support), so here they are absent as they are there.
sys.modules["scipy"] = sys.modules["yaml"] = sys.modules["cffi"] = None
import gateway.api.app, gateway.backends.grpc_backend, gateway.pipeline, memefly.cli.batch_run, memefly.cli
app = gateway.api.app.create_app(gateway.settings.Settings(backend="grpc"))
# memefly batch imports what it needs when it runs: up to its first check of the arguments.
assert memefly.cli.main(["batch", "--out", "unused.jsonl", "--encoder", "h:1", "--decoder", "h:1"]) == 2
# The searches' compiled kernels build (or load) without them too.
from memefly.decoding.captioner import compile_kernels
compile_kernels()
tops = {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
owners = importlib.metadata.packages_distributions()
distributions = sorted({d for t in tops for d in owners.get(t, [])})
print(json.dumps({"modules": sorted(sys.modules), "distributions": distributions}))
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(canonical(Requirement(line).name))
    return names


def with_dependencies(names: set[str]) -> set[str]:
    """The names and everything pip installs along with them (their requirements, recursively)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return found


def test_gateway_image_commands_need_no_tensorflow_and_only_listed_packages(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.splitlines()[-1])
    heavy = [m for m in found["modules"] if m.startswith(("tensorflow.python", "keras", "model_export"))]
    assert not heavy, f"the gateway image has no TensorFlow or training code: {heavy[:5]}"

    installed = with_dependencies(requirement_names((ROOT / "docker" / "gateway-requirements.txt").read_text()))
    # Ours (installed with --no-deps), the TF Serving protos (copied in by the Dockerfile), and
    # what every Python 3.11 venv has (setuptools' _distutils_hack loads at start-up).
    provided = {"memefly", "tensorflow", "tensorflow-serving-api", "pip", "setuptools"}
    missing = {canonical(d) for d in found["distributions"]} - installed - provided
    assert not missing, f"imported by the gateway's commands but not in docker/gateway-requirements.txt: {missing}"
