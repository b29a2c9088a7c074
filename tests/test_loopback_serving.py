"""The loopback TF Serving (model_export/loopback_serving.py) serves the tiny export as TF Serving would.

One server for the file, over the export's two models plus the decoder again as version 3
(a symlink to version 1, as during a rollout), so "no version means the latest" is visible.
Each test starts from no faults and an empty call log, on its own channel.
"""

from __future__ import annotations

import io
import selectors
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from memefly import contract as c
from model_export.loopback_serving import GRPC_OPTIONS, Call, start_loopback_server, to_tensor_proto

ENCODER, DECODER = c.ENCODER_MODEL, c.DECODER_MODEL
LATEST_DECODER = 3
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models_dir(tiny_export, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served_models")
    for name in (ENCODER, DECODER):
        (root / name).mkdir()
        (root / name / "1").symlink_to(Path(tiny_export["models"][name]), target_is_directory=True)
    (root / DECODER / str(LATEST_DECODER)).symlink_to(Path(tiny_export["models"][DECODER]), target_is_directory=True)
    (root / DECODER / ".tmp-v9").mkdir()  # not a number: TF Serving ignores it
    (root / "logs").mkdir()  # no versions: not a model
    return root


@pytest.fixture(scope="module")
def server(models_dir):
    server = start_loopback_server(models_dir)
    yield server
    server.close()


@pytest.fixture
def serving(server):
    server.reset()
    server.tensor_content = False
    return server


@pytest.fixture
def stub(serving):
    with grpc.insecure_channel(serving.target, options=GRPC_OPTIONS) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(model, signature="", inputs=None, version=None, output_filter=(), label=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for alias, value in (inputs or {}).items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def predict(stub, *args, timeout=60, **kwargs) -> tuple[predict_pb2.PredictResponse, dict]:
    response = stub.Predict(predict_request(*args, **kwargs), timeout=timeout)
    return response, {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def metadata_request(model, version=None, fields=("signature_def",)):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


def sizes(tiny_export) -> dict[str, int]:
    meta = tiny_export["metadata"][DECODER]
    return {"templates": int(meta[c.NUM_TEMPLATES]), "top_k": int(meta["top_k"]), "vocab": int(meta["vocabulary_size"])}


def step_inputs(stub, tiny_export, rows=3):
    """Decoder init for `rows` one-hot template rows, then the first step's inputs."""
    probs = np.eye(sizes(tiny_export)["templates"], dtype=np.float32)[np.arange(rows) % sizes(tiny_export)["templates"]]
    _, state = predict(stub, DECODER, c.INIT_SIGNATURE, {c.TEMPLATE_PROBS: probs})
    token = np.full([rows], c.START_ID, np.int32)
    return {c.TOKEN: token, c.STATE: state[c.STATE], c.CONTEXT: state[c.CONTEXT]}


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# -- what a model server answers --------------------------------------------------------------


@pytest.mark.parametrize("model", [ENCODER, DECODER])
def test_metadata_signature_returns_the_exports_metadata(stub, tiny_export, model):
    expected = tiny_export["metadata"][model]
    keys = sorted(expected) + ["no-such-key"]
    response, out = predict(stub, model, c.METADATA_SIGNATURE, {c.KEYS: np.array(keys, dtype=object)})
    assert [v.decode() for v in out[c.VALUES]] == [expected[k] for k in keys[:-1]] + [""]
    assert response.model_spec.signature_name == c.METADATA_SIGNATURE
    assert response.model_spec.version.value == (LATEST_DECODER if model == DECODER else 1)


def test_decoder_init_then_step(stub, serving, tiny_export):
    hidden = int(serving.models[DECODER][1].signatures[c.STEP_SIGNATURE].inputs[c.STATE].tensor_shape.dim[1].size)
    inputs = step_inputs(stub, tiny_export, rows=3)
    assert inputs[c.STATE].shape == (3, hidden) and inputs[c.STATE].dtype == np.float32

    response, out = predict(stub, DECODER, "", inputs)  # "" is serving_default: the step
    k = sizes(tiny_export)["top_k"]
    assert response.model_spec.signature_name == c.STEP_SIGNATURE
    assert out[c.TOP_IDS].dtype == np.int32 and out[c.TOP_IDS].shape == (3, k)
    assert out[c.TOP_LOG_PROBS].dtype == np.float32 and out[c.TOP_LOG_PROBS].shape == (3, k)
    assert out[c.STATE].dtype == np.float32 and out[c.STATE].shape == (3, hidden)
    assert np.all(np.diff(out[c.TOP_LOG_PROBS], axis=1) <= 0) and np.all(out[c.TOP_LOG_PROBS] <= 0)
    assert np.all((out[c.TOP_IDS] >= 0) & (out[c.TOP_IDS] < sizes(tiny_export)["vocab"]))
    # TF Serving's default encoding (AsProtoField): numbers in typed fields, not tensor_content.
    assert len(response.outputs[c.TOP_LOG_PROBS].float_val) == 3 * k
    assert not response.outputs[c.TOP_LOG_PROBS].tensor_content


def test_tensor_content_encoding_can_be_switched_on(stub, serving):
    request = predict_request(DECODER, c.TEMPLATES_SIGNATURE, {c.IDS: np.array([0, 1], np.int32)})
    plain = stub.Predict(request, timeout=60)
    serving.tensor_content = True
    response = stub.Predict(request, timeout=60)
    counts, names = response.outputs[c.BOX_COUNTS], response.outputs[c.NAMES]
    assert counts.tensor_content and not counts.int_val
    np.testing.assert_array_equal(tf.make_ndarray(counts), tf.make_ndarray(plain.outputs[c.BOX_COUNTS]))
    # Strings too, as TF Serving's flag packs them: TensorFlow's own C++ parser reads them back.
    assert names.tensor_content and not names.string_val
    parsed = tf.io.parse_tensor(names.SerializeToString(), tf.string).numpy()
    assert parsed.tolist() == list(plain.outputs[c.NAMES].string_val)


def test_to_tensor_proto_matches_tf_serving_encodings():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    field = to_tensor_proto(array)
    assert list(field.float_val) == list(range(6)) and not field.tensor_content
    content = to_tensor_proto(np.array([7], np.int32), tensor_content=True)  # even one element
    assert content.tensor_content == np.array([7], np.int32).tobytes() and not content.int_val
    for proto, expected in ((field, array), (content, [7])):
        np.testing.assert_array_equal(tf.make_ndarray(proto), expected)
    half = np.array([0.5, -2.0, 65504.0], np.float16)  # AsProtoField: the bit patterns in half_val
    assert list(to_tensor_proto(half).half_val) == half.view(np.uint16).tolist()
    np.testing.assert_array_equal(tf.make_ndarray(to_tensor_proto(half)), half)
    strings = np.array([b"", b"Drake", "caf\u00e9".encode(), b"x" * 300, b"\x00\xff"], dtype=object).reshape(5, 1)
    packed = to_tensor_proto(strings, tensor_content=True)
    assert packed.tensor_content and not packed.string_val
    assert tf.io.parse_tensor(packed.SerializeToString(), tf.string).numpy().tolist() == strings.tolist()


def test_vocabulary_starts_with_the_special_tokens(stub):
    _, out = predict(stub, DECODER, c.VOCABULARY_SIGNATURE, {c.IDS: np.arange(5, dtype=np.int32)})
    assert [t.decode() for t in out[c.TOKENS]] == ["<pad>", "<start>", "<end>", "<unk>", "<sep>"]
    assert list(c.SPECIAL_TOKENS) == ["<pad>", "<start>", "<end>", "<unk>", "<sep>"]


def test_encoder_reads_png_bytes(stub, tiny_export):
    images = np.array([png(0), png(1)], dtype=object)
    response, out = predict(stub, ENCODER, "", {c.IMAGE_BYTES: images})
    assert response.model_spec.signature_name == c.ENCODER_BYTES_SIGNATURE
    assert out[c.FEATURES].shape == (2, c.FEATURE_DIM)
    probs = out[c.TEMPLATE_PROBS]
    assert probs.shape == (2, sizes(tiny_export)["templates"]) and np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_version_unset_serves_the_latest_and_a_pinned_one_is_honoured(stub, serving):
    ids = {c.IDS: np.arange(2, dtype=np.int32)}
    latest, _ = predict(stub, DECODER, c.VOCABULARY_SIGNATURE, ids)
    pinned, _ = predict(stub, DECODER, c.VOCABULARY_SIGNATURE, ids, version=1)
    assert (latest.model_spec.name, latest.model_spec.version.value) == (DECODER, LATEST_DECODER)
    assert pinned.model_spec.version.value == 1
    assert sorted(serving.models[DECODER]) == [1, LATEST_DECODER] and set(serving.models) == {ENCODER, DECODER}


def test_calls_are_recorded_with_their_batch_size(stub, serving, tiny_export):
    inputs = step_inputs(stub, tiny_export, rows=4)
    predict(stub, DECODER, c.STEP_SIGNATURE, inputs, version=1)
    assert serving.calls == [
        Call(DECODER, LATEST_DECODER, c.INIT_SIGNATURE, 4),
        Call(DECODER, 1, c.STEP_SIGNATURE, 4),
    ]


# -- what a model server refuses --------------------------------------------------------------


def test_unknown_model_and_version_are_not_found(stub):
    error = rpc_error(predict, stub, "no_such_model", c.METADATA_SIGNATURE, {c.KEYS: np.array([b"x"])})
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(no_such_model)"
    error = rpc_error(predict, stub, DECODER, c.METADATA_SIGNATURE, {c.KEYS: np.array([b"x"])}, version=7)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Servable not found for request: Specific({DECODER}, 7)"
    error = rpc_error(stub.GetModelMetadata, metadata_request(DECODER, version=7))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_version_label_is_unrecognized(stub):
    error = rpc_error(predict, stub, DECODER, c.METADATA_SIGNATURE, {c.KEYS: np.array([b"x"])}, label="stable")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: stable"


def test_unknown_signature_is_a_failed_precondition(stub):
    error = rpc_error(predict, stub, DECODER, "no_such_signature", {c.KEYS: np.array([b"x"])})
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "no_such_signature" not found.'


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: {**i, "bogus": i[c.CONTEXT]}, "input size does not match signature: 4!=3"),
        (lambda i: {c.TOKEN: i[c.TOKEN], c.STATE: i[c.STATE], "bogus": i[c.CONTEXT]}, "Signature input alias: context"),
        (lambda i: {c.TOKEN: i[c.TOKEN], c.STATE: i[c.STATE]}, "Missing but required: {context}."),
        (lambda i: {**i, c.TOKEN: i[c.TOKEN].astype(np.float32)}, "to be int32 but float is provided"),
        (lambda i: {**i, c.STATE: i[c.STATE][:, :-1]}, "Cannot feed value of shape"),
    ],
    ids=["extra input", "unknown alias", "missing input", "wrong dtype", "wrong shape"],
)
def test_bad_inputs_are_invalid_arguments(stub, tiny_export, change, message):
    inputs = change(step_inputs(stub, tiny_export, rows=2))
    error = rpc_error(predict, stub, DECODER, c.STEP_SIGNATURE, inputs)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_output_filter_selects_outputs_and_refuses_unknown_ones(stub, tiny_export):
    inputs = step_inputs(stub, tiny_export, rows=2)
    _, out = predict(stub, DECODER, c.STEP_SIGNATURE, inputs, output_filter=[c.TOP_IDS])
    assert set(out) == {c.TOP_IDS}
    error = rpc_error(predict, stub, DECODER, c.STEP_SIGNATURE, inputs, output_filter=[c.TOP_IDS, "bogus"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "output tensor alias not found in signature: bogus "
        "Outputs expected to be in the set {state,top_ids,top_log_probs}."
    )


def test_get_model_metadata_lists_the_signatures(stub, tiny_export):
    response = stub.GetModelMetadata(metadata_request(DECODER), timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value) == (DECODER, LATEST_DECODER)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    expected = {c.INIT_SIGNATURE, c.STEP_SIGNATURE, c.VOCABULARY_SIGNATURE}
    expected |= {c.TEMPLATES_SIGNATURE, c.SCORE_SIGNATURE, c.METADATA_SIGNATURE}
    assert expected <= set(signatures.signature_def)
    step = signatures.signature_def[c.STEP_SIGNATURE]
    assert set(step.inputs) == {c.TOKEN, c.STATE, c.CONTEXT}
    assert set(step.outputs) == {c.TOP_IDS, c.TOP_LOG_PROBS, c.STATE}
    error = rpc_error(stub.GetModelMetadata, metadata_request(DECODER, fields=["signature_def", "graph"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_other_methods_are_unimplemented(stub):
    from tensorflow_serving.apis import classification_pb2

    error = rpc_error(stub.Classify, classification_pb2.ClassificationRequest(), timeout=60)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


# -- faults ------------------------------------------------------------------------------------


def test_injected_failures_hit_the_named_model_then_it_recovers(stub, serving):
    keys = {c.KEYS: np.array([c.MODEL_VERSION.encode()])}
    serving.fail_next(grpc.StatusCode.UNAVAILABLE, count=2, model=DECODER, details="decoder down")
    for _ in range(2):
        error = rpc_error(predict, stub, DECODER, c.METADATA_SIGNATURE, keys)
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "decoder down")
        predict(stub, ENCODER, c.METADATA_SIGNATURE, keys)  # another model is unaffected
    _, out = predict(stub, DECODER, c.METADATA_SIGNATURE, keys)
    assert out[c.VALUES][0] == b"1"
    assert [call.model for call in serving.calls] == [DECODER, ENCODER, DECODER, ENCODER, DECODER]


def test_injected_delay_runs_past_a_short_deadline(stub, serving):
    keys = {c.KEYS: np.array([c.MODEL_VERSION.encode()])}
    serving.set_delay(30.0, model=DECODER)  # far beyond the deadline: no race with it
    error = rpc_error(predict, stub, DECODER, c.METADATA_SIGNATURE, keys, timeout=0.2)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    predict(stub, ENCODER, c.METADATA_SIGNATURE, keys)  # the delay is for the decoder only
    serving.delay_s = 0
    predict(stub, DECODER, c.METADATA_SIGNATURE, keys)


def test_a_delayed_call_frees_its_worker_when_the_client_gives_up(serving):
    # One worker: if the abandoned call kept sleeping, the next call would wait out the delay.
    other = start_loopback_server(serving.models, model_names=[DECODER], max_workers=1, delay_s=60.0)
    request = predict_request(DECODER, c.VOCABULARY_SIGNATURE, {c.IDS: np.array([1], np.int32)})
    try:
        with grpc.insecure_channel(other.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert rpc_error(stub.Predict, request, timeout=0.2).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            other.delay_s = 0
            assert stub.Predict(request, timeout=30).model_spec.version.value == LATEST_DECODER
    finally:
        other.close()


def test_stop_takes_the_server_away_and_start_brings_it_back_on_the_same_port(serving):
    # A second server sharing the loaded models, so the module's server stays untouched.
    other = start_loopback_server(serving.models, model_names=[DECODER])
    port, request = other.port, predict_request(DECODER, c.VOCABULARY_SIGNATURE, {c.IDS: np.array([1], np.int32)})
    try:
        other.stop()
        with grpc.insecure_channel(other.target) as channel:
            error = rpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict, request, timeout=10)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        other.start()
        assert other.port == port
        with grpc.insecure_channel(other.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=30, wait_for_ready=True)  # waits for the reconnect
        assert response.model_spec.version.value == LATEST_DECODER
        with pytest.raises(OSError):  # the port is taken while it serves
            start_loopback_server(serving.models, port=port)
    finally:
        other.close()
    assert serving.models[DECODER][1].session.graph is not None  # shared sessions are left open


def test_memefly_loopback_prints_listening_and_serves(models_dir, tmp_path):
    decoder_only = tmp_path / "models"
    (decoder_only / DECODER).mkdir(parents=True)
    (decoder_only / DECODER / "1").symlink_to((models_dir / DECODER / "1").resolve(), target_is_directory=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "memefly.cli", "loopback", "--models-dir", str(decoder_only), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=180), "no output from the script"
        line = process.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:")
        with grpc.insecure_channel(line.removeprefix("listening on ")) as channel:
            request = predict_request(DECODER, c.VOCABULARY_SIGNATURE, {c.IDS: np.array([2], np.int32)})
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        assert tf.make_ndarray(response.outputs[c.TOKENS]).tolist() == [c.END.encode()]
        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
