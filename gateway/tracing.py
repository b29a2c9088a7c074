"""OpenTelemetry traces: off unless the standard OTEL_* environment variables ask for them.

On when OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`) or an OTLP endpoint is set
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); OTEL_SDK_DISABLED=true
wins. The SDK reads the rest itself (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_EXPORTER_OTLP_PROTOCOL, headers, sampler...).

Each HTTP request is a server span (FastAPI's instrumentation) carrying its X-Request-ID
(`memefly.request_id`, set by gateway/api/request_ids.py).
Model calls are made for many requests at once (continuous batching), so each batch call is
a span of its own, linked to the spans of the requests it serves, and TF Serving's gRPC
calls (gRPC's instrumentation) are its children: from a request, its trace's links lead to
every model call it was part of.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.util.types import AttributeValue

tracer = trace.get_tracer("memefly.gateway")


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporters(environ: Mapping[str, str]) -> Iterator[SpanExporter]:
    for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = name.strip().lower()
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            yield ConsoleSpanExporter()
        elif name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

                yield GrpcExporter()
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

                yield HttpExporter()
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER: {name!r} is not otlp, console or none")


def set_up(
    app: FastAPI, environ: Mapping[str, str] = os.environ, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Traces for APP when the environment asks for them (or EXPORTER is given: tests). Returns
    the tracer provider, or None when tracing is off."""
    if exporter is None and not wanted(environ):
        return None
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "memefly-gateway"})
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for made in _exporters(environ) if exporter is None else ():
        provider.add_span_processor(BatchSpanProcessor(made))
    trace.set_tracer_provider(provider)
    global tracer
    tracer = provider.get_tracer("memefly.gateway")
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    client = GrpcAioInstrumentorClient()  # type: ignore[no-untyped-call]  # its __init__ is unannotated
    if not client.is_instrumented_by_opentelemetry:
        client.instrument(tracer_provider=provider)
    return provider


def current() -> trace.SpanContext | None:
    """The calling request's span, to link a batch call to (None: no request span)."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextmanager
def batch_call(
    name: str, requests: Iterable[trace.SpanContext | None], **attributes: AttributeValue
) -> Iterator[trace.Span]:
    """A span for one model call made for many requests, linked to each of their spans."""
    links = [trace.Link(context) for context in requests if context is not None]
    with tracer.start_as_current_span(name, links=links, attributes=attributes) as span:
        yield span
