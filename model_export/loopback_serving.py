"""A loopback TF Serving: TensorFlow Serving's gRPC PredictionService over real SavedModels.

There is no tensorflow_model_server binary on a development machine, so gateway tests and
benchmarks talk to this instead, and so can a user who wants the gRPC setup without Docker
(`memefly loopback --models-dir models`, then `MEMEFLY_BACKEND=grpc memefly serve`). It
loads models the way TF Serving does (every numeric version directory under DIR/<model>/,
each into its own tf.Graph and Session with the "serve" tag), runs signatures by their
SignatureDef tensor names, and answers with TF Serving's status codes and messages
(predict_util.cc, get_model_metadata_impl.cc and server_core.cc of tensorflow/serving 2.x).
It imports TensorFlow, gRPC and the tensorflow-serving-api protos only, never project code,
so it sees the models exactly as a model server does.

On top of that, faults for tests, changeable while it runs: a delay before answering,
injected failures for the next N calls, and stop()/start() on the same port. Every call is
recorded in `calls`.

    server = start_loopback_server(models_dir)        # port 0: a free port
    stub = PredictionServiceStub(grpc.insecure_channel(server.target))
    server.fail_next(grpc.StatusCode.UNAVAILABLE, count=2, model="memefly_decoder")
    server.set_delay(0.5, model="memefly_encoder")
    server.calls[-1]                                  # Call(model, version, signature, batch)
    server.close()

As a command (prints `listening on HOST:PORT` once ready, serves until SIGTERM or SIGINT):

    memefly loopback --models-dir DIR [--host 127.0.0.1] [--port 8500] [--delay-ms 0]
    python -m model_export.loopback_serving ...          (the same)

Known differences from TF Serving: all versions on disk are loaded (as with the `all {}`
version policy; TF Serving's default loads the latest only); no version labels are
configured, no batching, no warm-up replay; Classify, Regress and MultiInference are
UNIMPLEMENTED, as is ModelService's HandleReloadConfigRequest (GetModelStatus answers); a fed
shape that does not fit the placeholder is refused before the graph runs (TF Serving would
fail inside the graph, also with INVALID_ARGUMENT).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"  # the only metadata field TF Serving knows
MAX_MESSAGE_BYTES = 64 << 20
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Two servers silently sharing a port would hide a test's mistake: make the second fail.
    ("grpc.so_reuseport", 0),
]
# TF's error codes are gRPC's, number for number.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Where Tensor::AsProtoField puts each dtype's values (TF Serving's default reply encoding).
_VALUE_FIELDS = {
    types_pb2.DT_HALF: "half_val",  # bit patterns (Tensor::AsProtoField puts uint16 bits in int32s)
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
}


class ServingError(Exception):
    """A request TF Serving would refuse: the gRPC code and message it would answer with."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Call(NamedTuple):
    """One Predict as received: version is the one served (None if unresolved), batch is dim 0
    of the first input by name (None for a scalar or no input)."""

    model: str
    version: int | None
    signature: str
    batch: int | None


class Servable:
    """One loaded model version: its own Graph and Session, like TF Serving's SavedModelBundle."""

    def __init__(self, name: str, version: int, path: Path):
        self.name, self.version, self.path = name, version, path
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        self.signatures = self.meta_graph.signature_def
        self._callables: dict[tuple, Callable] = {}

    def run(self, fetches: list[str], feeds: dict[str, np.ndarray]) -> list:
        """Session.run with the (feeds, fetches) pair prepared once: TF's C++ DirectSession
        (TF Serving's) keeps an executor per such pair, so a repeated call costs only the
        computation; Python's plain Session.run would redo its fetch handling every time."""
        key = (tuple(fetches), tuple(feeds))
        if key not in self._callables:
            self._callables[key] = self.session.make_callable(fetches, feed_list=list(feeds))
        return self._callables[key](*feeds.values())

    def close(self) -> None:
        self.session.close()


Models = dict[str, dict[int, Servable]]  # model name -> version -> servable


def load_models(
    models_dir: str | Path, names: Iterable[str] | None = None, log: Callable[[str], None] | None = None
) -> Models:
    """Every numeric version of every model under models_dir (or of `names` only)."""
    root = Path(models_dir)
    wanted = set(names) if names is not None else None
    models: Models = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if wanted is not None and model_dir.name not in wanted:
            continue
        # TF Serving's file system source ignores directories whose name is not a number.
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        for version in versions:
            started = time.perf_counter()
            servable = Servable(model_dir.name, version, model_dir / str(version))
            models.setdefault(model_dir.name, {})[version] = servable
            if log:
                log(f"loaded {model_dir.name} version {version} in {time.perf_counter() - started:.1f} s")
    if wanted is not None and wanted - set(models):
        raise FileNotFoundError(f"no numeric version directory for {sorted(wanted - set(models))} under {root}")
    return models


def _dtype_name(dtype: int) -> str:
    """TF's DataTypeString: DT_FLOAT -> "float", DT_INT32 -> "int32"."""
    return types_pb2.DataType.Name(dtype)[3:].lower()


def _join(names: Iterable[str]) -> str:
    return ",".join(sorted(names))


def to_tensor_proto(value, tensor_content: bool = False):
    """An output as TF Serving encodes it: in the typed *_val fields (Tensor::AsProtoField, its
    default), or all of it as bytes in tensor_content (AsProtoTensorContent, with
    --enable_serialization_as_tensor_content): numbers raw, strings as EncodeStringList packs them."""
    array = np.asarray(value)
    proto = tf.make_tensor_proto(array)
    if proto.dtype == types_pb2.DT_STRING:
        if tensor_content:
            strings = [s if isinstance(s, bytes) else str(s).encode() for s in array.ravel()]
            proto.ClearField("string_val")
            proto.tensor_content = b"".join(_varint(len(s)) for s in strings) + b"".join(strings)
        return proto
    field = _VALUE_FIELDS.get(proto.dtype)
    if field is None:  # dtypes TF Serving's clients never see here
        return proto
    proto.ClearField("tensor_content")
    proto.ClearField(field)
    if tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    else:
        values = array.view(np.uint16) if proto.dtype == types_pb2.DT_HALF else array
        getattr(proto, field).extend(values.ravel().tolist())
    return proto


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _input_feeds(signature, inputs) -> list[tuple[str, meta_graph_pb2.TensorInfo, np.ndarray, int]]:
    """(alias, TensorInfo, array, sent dtype) per signature input, checked as predict_util.cc
    and saved_model::GetInputValues check them."""
    expected, sent = set(signature.inputs), set(inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_join(sent)}}}) != "
            f"len({{{_join(expected)}}}). Sent extra: {{{_join(sent - expected)}}}. "
            f"Missing but required: {{{_join(expected - sent)}}}.",
        )
    feeds = []
    for alias in sorted(expected):
        info = signature.inputs[alias]
        if alias in inputs:
            proto = inputs[alias]
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request and no default "
                f"value provided. Inputs expected to be in the request {{{_join(sent)}}}, or default input "
                f"alias set: {_join(signature.defaults)}",
            )
        try:
            array = tf.make_ndarray(proto)
        except Exception:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from None
        feeds.append((alias, info, array, proto.dtype))
    if sent - expected:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Inputs contains invalid name. Used request inputs: {_join(sent & expected)}, "
            f"request input: {_join(sent)}",
        )
    return feeds


def _output_aliases(signature, output_filter) -> list[str]:
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{_join(signature.outputs)}}}.",
            )
        if alias in aliases:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or sorted(signature.outputs)  # no filter: every output


class _Fault:
    def __init__(self, code: grpc.StatusCode, count: int, model: str | None, details: str, rpc: str | None):
        self.code, self.remaining, self.model, self.details, self.rpc = code, count, model, details, rpc


class LoopbackServer:
    """PredictionService over loaded SavedModels, with faults a test can change while it runs.

    models: a directory (loaded here, and closed by close()) or Models from load_models (shared
    with other servers, left open). model_names limits which models are served.
    """

    def __init__(
        self,
        models: str | Path | Models,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model_names: Iterable[str] | None = None,
        delay_s: float = 0.0,
        delay_model: str | None = None,
        tensor_content: bool = False,
        max_workers: int = 8,
        log: Callable[[str], None] | None = None,
    ):
        self._owns_models = isinstance(models, (str, Path))
        if isinstance(models, (str, Path)):
            models = load_models(models, model_names, log)
        elif model_names is not None:
            models = {name: models[name] for name in model_names}
        self.models: Models = models
        self.host, self.port = host, port
        self.tensor_content = tensor_content  # read per call: may be flipped while running
        self.max_workers = max_workers
        self.calls: list[Call] = []
        self._delay = (float(delay_s), delay_model)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> LoopbackServer:
        """Serve (again) on self.port; the first start with port 0 picks a free port and keeps it."""
        with self._lock:
            if self._server is not None:
                return self
            executor = futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="loopback-serving")
            server = grpc.server(executor, options=GRPC_OPTIONS)
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Servicer(self), server)
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self), server)
            try:
                port = server.add_insecure_port(f"{self.target.rsplit(':', 1)[0]}:{self.port}")
            except RuntimeError as e:  # grpc raises when the port is taken
                executor.shutdown(wait=False)
                raise OSError(f"cannot listen on {self.target}: {e}") from e
            server.start()
            self._server, self._executor, self.port = server, executor, port
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop answering (in-flight calls are cancelled after `grace` seconds); start() resumes."""
        with self._lock:
            server, executor = self._server, self._executor
            self._server = self._executor = None
        if server is not None:
            assert executor is not None  # set with the server
            server.stop(grace).wait()
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self, grace: float | None = None) -> None:
        """Stop, and free the sessions this server loaded itself."""
        self.stop(grace)
        if self._owns_models:
            for versions in self.models.values():
                for servable in versions.values():
                    servable.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------

    def set_delay(self, seconds: float, model: str | None = None) -> None:
        """Sleep `seconds` before answering each call (for `model` only, if given)."""
        self._delay = (float(seconds), model)

    @property
    def delay_s(self) -> float:
        return self._delay[0]

    @delay_s.setter
    def delay_s(self, seconds: float) -> None:
        self._delay = (float(seconds), self._delay[1])

    def fail_next(
        self,
        code: grpc.StatusCode,
        count: int = 1,
        model: str | None = None,
        details: str = "injected",
        rpc: str | None = None,
    ) -> None:
        """The next `count` calls (for `model`, and to method `rpc` such as "Predict", if given)
        abort with `code` and `details`, before any model runs."""
        with self._lock:
            self._faults.append(_Fault(code, count, model, details, rpc))

    def reset(self) -> None:
        """No delay, no pending failures, an empty call log."""
        with self._lock:
            self._faults.clear()
        self._delay = (0.0, None)
        self.calls.clear()

    def _apply_faults(self, rpc: str, model: str, context: grpc.ServicerContext) -> None:
        seconds, only = self._delay
        if seconds > 0 and only in (None, model):
            # Sleep in slices, so a client that gave up (deadline, cancel) or stop() frees the thread.
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0 and context.is_active():
                time.sleep(min(left, 0.01))
            if not context.is_active():
                raise ServingError(grpc.StatusCode.CANCELLED, "client went away during the injected delay")
        with self._lock:
            for fault in self._faults:
                if fault.model in (None, model) and fault.rpc in (None, rpc):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    raise ServingError(fault.code, fault.details)

    # -- the service -----------------------------------------------------------------------

    def _servable(self, spec) -> Servable:
        """ServerCore::ServableRequestFromModelSpec, then the manager's lookup."""
        if not spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":  # labels are allowed by TF Serving, but none is configured
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {spec.version_label}"
            )
        versions = self.models.get(spec.name, {})
        if choice == "version":
            if spec.version.value not in versions:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({spec.name}, {spec.version.value})",
                )
            return versions[spec.version.value]
        if not versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        return versions[max(versions)]

    def _record(self, request: predict_pb2.PredictRequest) -> None:
        spec = request.model_spec
        try:
            version = self._servable(spec).version
        except ServingError:
            version = None
        first = request.inputs[min(request.inputs)] if request.inputs else None
        batch = first.tensor_shape.dim[0].size if first is not None and first.tensor_shape.dim else None
        self.calls.append(Call(spec.name, version, spec.signature_name or DEFAULT_SIGNATURE, batch))

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """predict_util.cc's RunPredict on one loaded version; raises ServingError."""
        servable = self._servable(request.model_spec)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in servable.signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        signature = servable.signatures[name]
        feeds = _input_feeds(signature, request.inputs)
        aliases = _output_aliases(signature, request.output_filter)
        # Python's Session.run would cast a fed value to the placeholder's dtype; TF Serving's
        # C++ Session refuses it, so check first, with the C++ message.
        for index, (_, info, _, sent) in enumerate(feeds):
            if sent != info.dtype:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expects arg[{index}] to be {_dtype_name(info.dtype)} but {_dtype_name(sent)} is provided",
                )
        try:
            values = servable.run(
                [signature.outputs[a].name for a in aliases], {info.name: array for _, info, array, _ in feeds}
            )
        except tf.errors.OpError as e:
            raise ServingError(_GRPC_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message) from None
        except (ValueError, TypeError) as e:  # Session.run's own feed checks (shape)
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        tensor_content = self.tensor_content
        for alias, value in zip(aliases, values, strict=True):
            response.outputs[alias].CopyFrom(to_tensor_proto(value, tensor_content))
        return response

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
        """get_model_metadata_impl.cc: the SignatureDefMap, packed in an Any."""
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        if not request.metadata_field:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
        servable = self._servable(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signatures.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest):
        """get_model_status_impl.cc: every loaded version, AVAILABLE (this server loads before it listens)."""
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        versions = sorted(self.models.get(spec.name, {}))
        if spec.HasField("version"):
            if spec.version.value not in versions:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {spec.version.value} of model {spec.name}"
                )
            versions = [spec.version.value]
        elif not versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def _answer(server: LoopbackServer, rpc: str, request, context, handler):
    try:
        server._apply_faults(rpc, request.model_spec.name, context)
        return handler(request)
    except ServingError as e:
        context.abort(e.code, e.details)


class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """The gRPC face of a LoopbackServer: faults first, then the TF Serving behaviour."""

    def __init__(self, server: LoopbackServer):
        self._server = server

    def Predict(self, request, context):
        self._server._record(request)
        return _answer(self._server, "Predict", request, context, self._server.predict)

    def GetModelMetadata(self, request, context):
        return _answer(self._server, "GetModelMetadata", request, context, self._server.get_model_metadata)

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the loopback server implements Predict and GetModelMetadata only")

    Classify = Regress = MultiInference = _unimplemented


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService: model status (what a client asks before it sends traffic); no config reloads."""

    def __init__(self, server: LoopbackServer):
        self._server = server

    def GetModelStatus(self, request, context):
        return _answer(self._server, "GetModelStatus", request, context, self._server.get_model_status)

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the loopback server's models are fixed when it starts")


def start_loopback_server(
    models_dir: str | Path | Models, host: str = "127.0.0.1", port: int = 0, **options
) -> LoopbackServer:
    """Load the models (seconds for the InceptionV3 encoder) and serve them on a background
    thread pool. options: model_names, delay_s, delay_model, tensor_content, max_workers, log."""
    server = LoopbackServer(models_dir, host, port, **options)
    try:
        return server.start()
    except BaseException:
        server.close()  # frees the sessions it loaded
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", required=True, help="DIR/<model_name>/<version>/saved_model.pb")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="sleep before answering each call")
    parser.add_argument("--tensor-content", action="store_true", help="numeric outputs as raw tensor_content bytes")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server = start_loopback_server(
        args.models_dir,
        args.host,
        args.port,
        delay_s=args.delay_ms / 1000,
        tensor_content=args.tensor_content,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(f"listening on {server.target}", flush=True)
    while not stopping.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    server.close(grace=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
