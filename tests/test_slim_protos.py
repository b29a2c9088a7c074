"""The gateway image's TF Serving protos work without TensorFlow installed."""

import subprocess
import sys
from pathlib import Path

import grpc
import numpy
import typing_extensions
from google import protobuf

ROOT = Path(__file__).resolve().parent.parent

# Run in an interpreter that sees only the extracted protos and grpcio/protobuf/numpy: the
# real TensorFlow in this venv must be unreachable, as in the gateway image.
CHECK = """
import sys
sys.path[:0] = {paths!r}
import tensorflow
assert not hasattr(tensorflow, "constant"), "the real TensorFlow was imported"
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc
request = predict_pb2.PredictRequest()
request.model_spec.name = "memefly_decoder"
request.model_spec.signature_name = "serving_default"
tensor = request.inputs["token"]
tensor.dtype = 3  # DT_INT32
tensor.tensor_shape.dim.add(size=2)
tensor.int_val.extend([1, 7])
again = predict_pb2.PredictRequest.FromString(request.SerializeToString())
assert list(again.inputs["token"].int_val) == [1, 7]
assert hasattr(prediction_service_pb2_grpc, "PredictionServiceStub")
assert hasattr(model_service_pb2_grpc, "ModelServiceStub")
# The gateway's gRPC path itself: numpy <-> TensorProto and the backend module.
import numpy as np
from gateway.backends.tensors import from_proto, to_proto
import gateway.backends.grpc_backend
state = np.arange(6, dtype=np.float32).reshape(2, 3)
assert from_proto(to_proto(state)).tolist() == state.tolist()
assert from_proto(to_proto(np.array([b"a", b"b"], dtype=object))).tolist() == [b"a", b"b"]
assert not hasattr(sys.modules["tensorflow"], "constant"), "the real TensorFlow was imported"
print(len([m for m in sys.modules if m.startswith("tensorflow")]))
"""


def _isolated_deps(tmp_path: Path) -> Path:
    """A folder with only grpcio (and its typing_extensions), protobuf and numpy."""
    deps = tmp_path / "deps"
    (deps / "google").mkdir(parents=True)
    (deps / "google" / "protobuf").symlink_to(Path(protobuf.__file__).parent)
    (deps / "grpc").symlink_to(Path(grpc.__file__).parent)
    (deps / "numpy").symlink_to(Path(numpy.__file__).parent)
    (deps / "typing_extensions.py").symlink_to(Path(typing_extensions.__file__))
    return deps


def test_extracted_protos_and_the_gateway_grpc_path_work_without_tensorflow(tmp_path):
    out = tmp_path / "protos"
    subprocess.run([sys.executable, str(ROOT / "docker" / "slim_serving_protos.py"), str(out)], check=True)
    assert (out / "tensorflow" / "__init__.py").read_text() == ""
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 2_000_000  # a few hundred kB, not TensorFlow's 2 GB
    code = CHECK.format(paths=[str(out), str(_isolated_deps(tmp_path)), str(ROOT)])
    # -S: no site-packages, so nothing but the paths above is importable.
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) > 10  # the TensorFlow protos came from the extracted copy
