"""The TF Serving config files parse as the server will parse them, and agree with the contract.

tensorflow_model_server reads each file with protobuf's TextFormat and refuses to start on
an unknown field, so every file is parsed strictly into its message type here.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from google.protobuf import text_format
from serving_protos import message_class  # tests/ is on sys.path under pytest
from tensorflow_serving.config import model_server_config_pb2

from memefly import contract

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"encoder": contract.ENCODER_MODEL, "decoder": contract.DECODER_MODEL}
VARIANTS = ("gpu", "cpu")

# The largest call the gateway makes to each model: its encoder micro-batch (32 uploads)
# and its continuous-batching decoder step (512 rows). A call above max_batch_size is
# rejected by TF Serving, so every variant must accept at least this many rows.
GATEWAY_ROWS_PER_CALL = {"encoder": 32, "decoder": 512}


def parse(path: Path, message):
    text_format.Parse(path.read_text(), message)  # raises on any unknown field
    return message


def batching(service: str, variant: str):
    return parse(ROOT / f"{service}_service" / f"batching_{variant}.txt", message_class("BatchingParameters")())


@pytest.mark.parametrize("service", SERVICES)
def test_models_config_matches_contract(service):
    config = parse(ROOT / f"{service}_service" / "models.config", model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == SERVICES[service]
    assert model.base_path == f"/models/{SERVICES[service]}"
    assert model.model_platform == "tensorflow"
    # The gateway pins a version; during a rollout both the old and the new must be served.
    policy = model.model_version_policy
    assert policy.WhichOneof("policy_choice") == "latest"
    assert policy.latest.num_versions >= 2


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("service", SERVICES)
def test_batching_parameters(service, variant):
    params = batching(service, variant)
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        assert params.HasField(field), f"{field} missing: the server default would apply silently"
    max_batch = params.max_batch_size.value
    sizes = list(params.allowed_batch_sizes)
    assert sizes, "allowed_batch_sizes bounds the shapes to warm up"
    assert sizes[0] >= 1
    assert all(a < b for a, b in pairwise(sizes)), "allowed_batch_sizes must increase"
    assert sizes[-1] == max_batch, "TF Serving requires the last allowed size to equal max_batch_size"
    assert max_batch >= GATEWAY_ROWS_PER_CALL[service]
    # A few milliseconds at most (the batching guide's range for online serving).
    assert 0 <= params.batch_timeout_micros.value <= 10_000
    assert params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= params.num_batch_threads.value
    assert not params.pad_variable_length_inputs, "every input has a fixed per-row shape"


@pytest.mark.parametrize("service", SERVICES)
def test_cpu_variant_is_no_bigger_than_gpu(service):
    gpu, cpu = batching(service, "gpu"), batching(service, "cpu")
    assert cpu.num_batch_threads.value <= gpu.num_batch_threads.value
    assert cpu.max_batch_size.value <= gpu.max_batch_size.value
    assert cpu.batch_timeout_micros.value <= gpu.batch_timeout_micros.value


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_batches_are_larger_and_never_wait_longer(variant):
    # The gateway already batches decoder steps and a wait is paid once per token.
    encoder, decoder = batching("encoder", variant), batching("decoder", variant)
    assert decoder.batch_timeout_micros.value <= encoder.batch_timeout_micros.value
    assert decoder.max_batch_size.value > encoder.max_batch_size.value


@pytest.mark.parametrize("service", SERVICES)
def test_monitoring_config(service):
    config = parse(ROOT / f"{service}_service" / "monitoring.config", message_class("MonitoringConfig")())
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


@pytest.mark.parametrize("service", SERVICES)
def test_config_files_explain_themselves(service):
    # The reasons for the numbers live at the top of each file (text format allows # comments).
    files = [*(ROOT / f"{service}_service").glob("*.config"), *(ROOT / f"{service}_service").glob("*.txt")]
    assert len(files) == 4  # models.config, monitoring.config, batching_{gpu,cpu}.txt
    for path in files:
        assert path.read_text().startswith("#"), f"{path.name} has no header comment"


def test_strict_parser_rejects_unknown_fields():
    with pytest.raises(text_format.ParseError):
        text_format.Parse(
            "max_batch_size { value: 8 } max_batch_sise { value: 8 }", message_class("BatchingParameters")()
        )


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_warmup_replays_every_allowed_batch_size(service, variant):
    # Batching pads each call to an allowed size; a size warm-up never ran is traced (and,
    # on a GPU, autotuned) during a real request.
    from model_export.warmup import DECODER_BATCH_SIZES, ENCODER_BATCH_SIZES

    warmed = {"encoder": ENCODER_BATCH_SIZES, "decoder": DECODER_BATCH_SIZES}[service]
    params = batching(service, variant)
    assert set(params.allowed_batch_sizes) <= set(warmed)
    # A warm-up request above max_batch_size is rejected, and a failed warm-up fails the load.
    assert max(warmed) <= params.max_batch_size.value
