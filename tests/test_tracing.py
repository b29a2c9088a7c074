"""OpenTelemetry: off by default, on with the standard variables; a request is followed from
its HTTP span, through the batch calls it took part in, to the gRPC calls to TF Serving."""

from __future__ import annotations

from gateway_harness import gateway_settings, running_gateway
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway import tracing


def test_tracing_is_off_unless_the_standard_variables_ask():
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.set_up(object(), {}) is None  # nothing instrumented


def test_a_request_is_followed_from_its_http_span_to_the_model_servers(served_models_dir, loopback):
    exporter = InMemorySpanExporter()
    settings = gateway_settings(served_models_dir, "grpc", loopback.target)
    with running_gateway(settings, span_exporter=exporter) as gateway, gateway.client() as client:
        template = gateway.service.templates[0].name
        answer = client.post("/memes", json={"template": template}, headers={"X-Request-ID": "follow-me-7"})
        assert answer.status_code == 200, answer.text
    spans = exporter.get_finished_spans()
    (server,) = [
        s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("memefly.request_id") == "follow-me-7"
    ]
    assert server.attributes["http.route"] == "/memes"
    batch_calls = [s for s in spans if any(link.context.span_id == server.context.span_id for link in s.links)]
    # Its decoder steps (and its `init` call, unless the template's conditioning was cached).
    assert "decoder step" in {s.name for s in batch_calls} <= {"decoder step", "init call"}
    called = {s.context.span_id: s.name for s in batch_calls}
    to_tf_serving = [s for s in spans if s.kind == SpanKind.CLIENT and s.parent and s.parent.span_id in called]
    assert {called[s.parent.span_id] for s in to_tf_serving} == {s.name for s in batch_calls}
    assert all(s.name == "/tensorflow.serving.PredictionService/Predict" for s in to_tf_serving)
