"""Copy TF Serving's Python protos, and the TensorFlow protos they import, into a folder.

tensorflow-serving-api's generated modules import TensorFlow's own *_pb2 modules
(tensor_pb2, meta_graph_pb2, ...), so the package depends on all of TensorFlow (~2 GB)
although a gRPC client needs only those few pure-Python files. The gateway image runs this
in a build stage that has TensorFlow and copies the result into a runtime without it.

    python docker/slim_serving_protos.py OUT_DIR
    python docker/slim_serving_protos.py --package gateway.backends.serving_protos gateway/backends/serving_protos

OUT_DIR then holds tensorflow_serving/ and a `tensorflow` package made only of protos (an
empty __init__): put it on sys.path of an image that has grpcio and protobuf but no
TensorFlow. Only generated modules (*_pb2, *_pb2_grpc) are followed and copied.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

ENTRY_POINTS = (
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_log_pb2",
)
_GENERATED_IMPORT = re.compile(r"^from ([\w.]+) import (\w+_pb2(?:_grpc)?)\b", re.MULTILINE)
_TOP_IMPORT = re.compile(r"^from (tensorflow(?:_serving)?[\w.]*) import", re.MULTILINE)


def _package_root(top: str) -> Path:
    """Where a top-level package lives, found without importing it (TensorFlow is slow)."""
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(top)
    return Path(list(spec.submodule_search_locations)[0]).parent


def proto_closure(entry_points=ENTRY_POINTS) -> dict[str, Path]:
    """Module name -> source file, for the entry points and every generated module they import."""
    found: dict[str, Path] = {}
    queue = list(entry_points)
    while queue:
        name = queue.pop()
        if name in found or name.startswith("google."):
            continue
        path = _package_root(name.split(".")[0]).joinpath(*name.split(".")).with_suffix(".py")
        found[name] = path
        for package, module in _GENERATED_IMPORT.findall(path.read_text()):
            queue.append(f"{package}.{module}")
    return found


def write(out: Path, modules: dict[str, Path], package: str | None = None) -> None:
    """With PACKAGE, the modules go under it and import each other through it (the copy
    vendored as gateway/backends/serving_protos, which never shadows a real TensorFlow)."""
    for name, source in modules.items():
        parts = name.split(".")
        target = out.joinpath(*parts).with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        if package is None:
            shutil.copyfile(source, target)
        else:
            text = _TOP_IMPORT.sub(lambda m: f"from {package}.{m.group(1)} import", source.read_text())
            target.write_text(text)
        for depth in range(1, len(parts)):  # every package level needs an (empty) __init__
            init = out.joinpath(*parts[:depth], "__init__.py")
            if not init.exists():
                init.write_text("")


def main() -> int:
    args = sys.argv[1:]
    package = None
    if len(args) == 3 and args[0] == "--package":
        package, args = args[1], args[2:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    modules = proto_closure()
    write(Path(args[0]), modules, package)
    print(f"copied {len(modules)} generated modules to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
