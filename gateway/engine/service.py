"""Image (or template name) in, ranked meme captions out: encoder, cache, init, continuous-batched decoding.

Owns readiness: at start-up it learns the vocabulary and templates from the served decoder,
checks that both models carry the same template fingerprint, and warms up; a monitor keeps
checking the model servers and starts over when they come back.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from gateway.backends import Backend, make_backend
from gateway.engine.admission import Overloaded
from gateway.engine.batcher import MicroBatcher
from gateway.engine.cache import LruCache
from gateway.engine.images import CheckedImage, already_checked, check_image, sha256
from gateway.engine.scheduler import DecodeScheduler
from gateway.engine.served_models import ServedModels, Template
from gateway.engine.template_names import template_key
from gateway.errors import DeadlineExceeded, GatewayError, InvalidRequest, ModelError, ModelUnavailable
from gateway.metrics import Metrics
from gateway.rendering.layout import Layouts
from gateway.settings import Settings
from memefly import contract as c
from memefly.content_view import most_confident
from memefly.decoding.captioner import Captioner, compile_kernels, template_box_counts, template_input_key
from memefly.decoding.options import DecodingOptions
from memefly.decoding.safety import offensive_token_ids
from memefly.decoding.search import Hypothesis

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    ready: bool = False
    reason: str = "starting: models not checked yet"
    error: GatewayError | None = None  # what made it not ready, with its log text (for in-process callers)


@dataclass(frozen=True)
class Conditioning:
    """What an image (or a named template) means to the decoder; cached, so computed once."""

    probs: np.ndarray  # template_probs [T]
    state: np.ndarray  # the decoder's `init` output for them [H]
    context: np.ndarray  # [C]


@dataclass(frozen=True)
class Meme:
    rank: int
    text: str  # boxes joined by "\n"
    boxes: list[str]
    score: float


@dataclass
class MemeResult:
    memes: list[Meme]
    templates: list[tuple[str, float]]  # the three likeliest, with probability
    image_sha256: str | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Is the image one of the known templates (its top probability at least the encoder's
    # known_threshold)? True for a named template; None with models exported without a threshold.
    known: bool | None = None


def _read_only(array: npt.ArrayLike) -> np.ndarray:
    array = np.array(array, dtype=np.float32)
    array.setflags(write=False)  # shared by every later request that hits the cache
    return array


class MemeService:
    def __init__(self, settings: Settings, backend: Backend | None = None, metrics: Metrics | None = None):
        self.settings = settings
        self.backend = backend or make_backend(settings)
        self.models = ServedModels(
            self.backend,
            encoder_max_batch=settings.encoder_max_batch,
            decoder_max_rows=settings.decoder_max_rows,
            wire_state=settings.wire_state,
        )
        self.metrics = metrics or Metrics()
        self.cache: LruCache[Conditioning] = LruCache(settings.template_cache_size)
        self.readiness = Readiness()
        self.vocabulary: list[str] = []
        self.templates: list[Template] = []
        self.model_info: dict[str, str] = {}
        self.known_threshold: float | None = None
        self._rewarm: asyncio.Task[None] | None = None
        self._template_ids: dict[str, int] = {}
        self.captioner = Captioner([])
        self.layouts = Layouts.shipped()
        # Over gRPC the step computes elsewhere: a second call in flight lets the gateway advance
        # one cohort's beams while the model server computes the other's. In-process both
        # share these cores, and one call at a time measured faster.
        self.scheduler = DecodeScheduler(
            self.models.step,
            max_rows=settings.decoder_max_rows,
            continuous=settings.continuous_batching,
            pipeline=2 if self.backend.name == "grpc" else 1,
            on_batch=self.metrics.decoder_rows.observe,
        )
        self.encoder = MicroBatcher(
            self._encode,
            max_batch=settings.encoder_max_batch,
            max_wait_s=settings.encoder_max_wait_ms / 1000,
            on_batch=self.metrics.encoder_images.observe,
        )
        self.initializer = MicroBatcher(
            self._init_rows, max_batch=settings.decoder_max_rows, max_wait_s=0.0, name="init"
        )
        self._monitor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._checked = asyncio.Event()  # the first start-up check has finished, either way
        self._check_now = asyncio.Event()  # a request saw the model servers fail: check them now
        self.draining = False

    # ---- life cycle -----------------------------------------------------------------
    async def start(self) -> None:
        self.scheduler.start()
        self.encoder.start()
        self.initializer.start()
        self._monitor = asyncio.create_task(self._keep_ready(), name="readiness")

    async def stop(self) -> None:
        for task in (self._monitor, self._rewarm):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.scheduler.stop()
        await self.encoder.stop()
        await self.initializer.stop()
        await self.backend.close()

    async def wait_ready(self, timeout_s: float, *, first_check_only: bool = False) -> Readiness:
        """For callers that want to block until ready (the client, benchmarks). With
        first_check_only, returns after the first start-up check even if it failed."""
        event = self._checked if first_check_only else self._connected
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass
        return self.readiness

    def _set_ready(self, ready: bool, reason: str = "", *, error: GatewayError | None = None) -> None:
        if ready != self.readiness.ready or reason != self.readiness.reason:
            (log.info if ready else log.warning)("ready=%s %s", ready, error.logged if error else reason)
        self.readiness = Readiness(ready, reason, error)
        self.metrics.ready.set(1 if ready else 0)
        if ready:
            self._connected.set()
        else:
            self._connected.clear()

    def start_draining(self) -> None:
        """Shutting down: /readyz says 503 from now on (gateway/api/draining.py refuses new requests);
        requests already inside still run, so the model readiness they check is left alone."""
        self.draining = True
        self.metrics.ready.set(0)

    async def _keep_ready(self) -> None:
        while True:
            was_ready = self.readiness.ready
            try:
                if was_ready:
                    await self._ping()
                else:
                    await self._connect()
                    self._set_ready(True, "")
            except asyncio.CancelledError:
                raise
            except GatewayError as error:
                self._set_ready(False, error.detail, error=error)
                if not was_ready and isinstance(error, ModelUnavailable):
                    await self._reset_connections()  # still down: the next check starts afresh
            except Exception as error:  # keep monitoring whatever happens; say what it was
                log.exception("readiness check failed")
                self._set_ready(False, f"{type(error).__name__}: {error}")
            self._checked.set()
            interval = self.settings.health_interval_s
            try:
                await asyncio.wait_for(self._check_now.wait(), interval if self.readiness.ready else min(interval, 0.5))
            except TimeoutError:
                pass
            self._check_now.clear()

    async def _reset_connections(self) -> None:
        try:
            await self.backend.reset()
        except Exception:  # the monitor must go on whatever closing a channel does
            log.exception("resetting the model-server connections failed")

    async def _connect(self) -> None:
        await self.backend.start()
        keys = (c.TEMPLATE_FINGERPRINT, c.MODEL_VERSION, c.NUM_TEMPLATES)
        encoder = await self.models.metadata(c.ENCODER_MODEL, keys + ("encoder_weights", c.KNOWN_THRESHOLD))
        decoder = await self.models.metadata(
            c.DECODER_MODEL,
            keys + (c.WEIGHTS_FINGERPRINT, "vocabulary_size", "top_k", c.TRAINING_CAPTIONS, c.WIRE_DTYPES),
        )
        if self.settings.wire_state not in (decoder.get(c.WIRE_DTYPES) or "float32").split(","):
            raise ModelError(
                f"the decoder v{decoder[c.MODEL_VERSION]} has no {self.settings.wire_state} step "
                "(exported before it): export it again, or unset MEMEFLY_WIRE_STATE"
            )
        if encoder[c.TEMPLATE_FINGERPRINT] != decoder[c.TEMPLATE_FINGERPRINT]:
            raise ModelError(
                f"the models do not belong together: template fingerprint {encoder[c.TEMPLATE_FINGERPRINT][:12]} "
                f"(encoder v{encoder[c.MODEL_VERSION]}) != {decoder[c.TEMPLATE_FINGERPRINT][:12]} "
                f"(decoder v{decoder[c.MODEL_VERSION]}); export them together"
            )
        if self.model_info and self._same_models(encoder, decoder):
            # A model server restarted with the models we have: ready at once, nothing to fetch
            # again; its first calls are warmed up meanwhile.
            if self._rewarm:
                self._rewarm.cancel()
            self._rewarm = asyncio.create_task(self._warm_up_quietly())
            return
        vocabulary = await self.models.vocabulary(int(decoder["vocabulary_size"]))
        templates = await self.models.templates(int(decoder[c.NUM_TEMPLATES]))
        offensive = await asyncio.to_thread(offensive_token_ids, vocabulary)
        training_captions = await self.models.training_captions(int(decoder.get(c.TRAINING_CAPTIONS) or 0))
        changed = (
            decoder[c.WEIGHTS_FINGERPRINT] != self.model_info.get("decoder_weights")
            or encoder["encoder_weights"] != self.model_info.get("encoder_weights")
            or encoder[c.MODEL_VERSION] != self.model_info.get("encoder_version")
        )
        if changed:  # cached template_probs and states came from other models
            self.cache.clear()
        self.vocabulary, self.templates = vocabulary, templates
        self.known_threshold = float(encoder[c.KNOWN_THRESHOLD]) if encoder.get(c.KNOWN_THRESHOLD) else None
        self.captioner = Captioner(vocabulary, [self._box_counts(t) for t in templates], training_captions, offensive)
        self._template_ids = {template_key(t.name): t.id for t in templates}
        self.model_info = {
            "version": str(self.backend.version),
            "encoder_version": encoder[c.MODEL_VERSION],
            "decoder_version": decoder[c.MODEL_VERSION],
            "encoder_weights": encoder["encoder_weights"],
            "decoder_weights": decoder[c.WEIGHTS_FINGERPRINT],
            "template_fingerprint": decoder[c.TEMPLATE_FINGERPRINT],
            "backend": self.backend.name,
        }
        await self._warm_up()
        # What is loaded now lives as long as the process: the collector need not walk it again
        # and again (a tenth of the gateway's time per decoding row, measured: benchmarks/ceiling.py).
        gc.freeze()

    def _same_models(self, encoder: dict[str, str], decoder: dict[str, str]) -> bool:
        info = self.model_info
        return (
            str(self.backend.version) == info.get("version")
            and encoder[c.MODEL_VERSION] == info.get("encoder_version")
            and decoder[c.MODEL_VERSION] == info.get("decoder_version")
            and encoder["encoder_weights"] == info.get("encoder_weights")
            and decoder[c.WEIGHTS_FINGERPRINT] == info.get("decoder_weights")
            and decoder[c.TEMPLATE_FINGERPRINT] == info.get("template_fingerprint")
        )

    async def _ping(self) -> None:
        for model in (c.ENCODER_MODEL, c.DECODER_MODEL):
            meta = await self.models.metadata(model, (c.TEMPLATE_FINGERPRINT,))
            if meta[c.TEMPLATE_FINGERPRINT] != self.model_info["template_fingerprint"]:
                raise ModelError(f"{model} now serves other templates: reconnecting")

    async def _warm_up_quietly(self) -> None:
        try:
            await self._warm_up()
        except Exception as error:  # a request would meet the same; the monitor will notice
            log.info("warm-up after reconnecting failed: %s", getattr(error, "logged", error))

    async def _warm_up(self) -> None:
        """One image through the encoder and one short decode: the first user does not pay for it."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
        await self.encoder.submit(buffer.getvalue())
        key = template_input_key(0)
        options = DecodingOptions(num_beams=2, num_return_sequences=1, max_length=3)
        await self._decode(await self._conditioning(key, probs=self._one_hot(0)), options, key)
        compile_kernels()  # every kind of search's compiled step, not only the beams' just run

    # ---- serving --------------------------------------------------------------------
    def require_ready(self) -> None:
        if not self.readiness.ready:
            raise ModelUnavailable(f"not ready: {self.readiness.reason}", retry_after_s=self.settings.retry_after_s)

    async def check_upload(self, data: bytes) -> CheckedImage:
        """The upload checks (size, type, pixels, decodability); an image whose template_probs
        are cached was checked before, and is not decoded again."""
        settings = self.settings
        if len(data) <= settings.max_upload_bytes:
            digest = sha256(data)
            if digest in self.cache:
                return already_checked(data, digest)
        # Pillow decodes on a worker thread: a big image must not stall the event loop.
        return await asyncio.to_thread(
            check_image, data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels
        )

    def template_id(self, name: str) -> int:
        found = self._template_ids.get(template_key(name))
        if found is None:
            raise InvalidRequest(
                f"unknown template {name!r}: GET /templates lists the {len(self.templates)} known ones"
            )
        return found

    def template_name(self, name: str) -> str:
        """The served spelling of a template name (422 if the models do not know it)."""
        return self.templates[self.template_id(name)].name

    async def memes(
        self,
        image: CheckedImage | None,
        template: str | None,
        options: DecodingOptions,
        on_caption: Callable[[list[str]], None] | None = None,
    ) -> MemeResult:
        """ON_CAPTION hears each caption the search keeps (its boxes), as it finishes."""
        self.require_ready()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                if template is not None:
                    template_id = self.template_id(template)
                    key = template_input_key(template_id)
                    conditioning = await self._conditioning(key, probs=self._one_hot(template_id))
                elif image is not None:
                    key = image.sha256
                    conditioning = await self._conditioning(key, image=image, deadline_s=self._encode_deadline(options))
                else:
                    raise InvalidRequest("send an image or name a template")
                encoded = time.perf_counter()
                left = self.settings.request_timeout_s - (encoded - started)
                hypotheses = await self._decode(
                    conditioning,
                    options,
                    key,
                    deadline_s=left if self.settings.admission_control else None,
                    on_caption=None if on_caption is None else lambda ids: on_caption(self.captioner.boxes(ids)),
                )
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {self.settings.request_timeout_s:g} s") from None
        except Overloaded:
            raise  # our own queue is full: the model servers are fine
        except ModelUnavailable:
            # Not ready only if the monitor's own check fails too: one overloaded call
            # (RESOURCE_EXHAUSTED) must not take the gateway out of rotation.
            self._check_now.set()
            raise
        done = time.perf_counter()
        templates = self._top_templates(conditioning.probs, 3)
        return MemeResult(
            memes=[self._meme(rank, h) for rank, h in enumerate(hypotheses, start=1)],
            templates=templates,
            known=True if template is not None else self.is_known(templates[0][1]),
            image_sha256=image.sha256 if image else None,
            timings_ms={
                "encode": round(1000 * (encoded - started), 2),
                "decode": round(1000 * (done - encoded), 2),
                "total": round(1000 * (done - started), 2),
            },
        )

    def is_known(self, top_probability: float) -> bool | None:
        """Is an image whose likeliest template has this probability one of the known templates?"""
        return None if self.known_threshold is None else bool(top_probability >= self.known_threshold)

    def _encode_deadline(self, options: DecodingOptions) -> float | None:
        """What the encoder queue may take of the request's time: what decoding will not (and a
        request that decoding alone would make late is refused now, not after encoding)."""
        if not self.settings.admission_control:
            return None
        if not self.scheduler.depth:  # an idle decoder admits anything: its estimate takes nothing from the encoder
            return self.settings.request_timeout_s
        decoding = self.scheduler.check_admission(options.rows, self.settings.request_timeout_s) or 0.0
        return self.settings.request_timeout_s - decoding

    async def template_probs(self, image: CheckedImage) -> np.ndarray:
        """The encoder's template_probs for an image (cached ones if it was seen before); no decoding."""
        self.require_ready()
        found = self.cache.get(image.sha256)
        if found is not None:
            return found.probs
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return np.asarray(await self._encode_views(image), np.float32)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {self.settings.request_timeout_s:g} s") from None

    async def _encode_views(self, image: CheckedImage, deadline_s: float | None = None) -> np.ndarray:
        """template_probs of an upload: of its views (the image, and the picture inside it when
        memefly/content_view.py finds one), the most confident; they share an encoder batch.
        The extra view only helps: refused or failed, the image's own answer stands."""
        main = asyncio.ensure_future(self.encoder.submit(image.data, deadline_s))
        extras = [asyncio.ensure_future(self.encoder.submit(view, deadline_s)) for view in image.extra_views]
        try:
            answers = [await main]
        except BaseException:
            for extra in extras:
                extra.cancel()
            raise
        for extra in extras:
            try:
                answers.append(await extra)
            except Exception as error:  # the image's own answer stands, whatever happened to this one
                log.info("the picture-inside view was not encoded: %s", getattr(error, "logged", error))
        return most_confident(answers)

    async def _conditioning(
        self,
        key: str,
        *,
        probs: np.ndarray | None = None,
        image: CheckedImage | None = None,
        deadline_s: float | None = None,
    ) -> Conditioning:
        """For template_probs given, or for an image's (from the encoder). Cached by image SHA-256
        (or template): popular templates come again and again, and then neither the encoder
        nor the decoder's `init` runs."""
        found = self.cache.get(key)
        if found is not None:
            self.metrics.cache_hits.inc()
            return found
        self.metrics.cache_misses.inc()
        if probs is None:
            assert image is not None, "_conditioning needs probs or an image"
            self.metrics.queue.set(self.encoder.waiting + 1)
            probs = await self._encode_views(image, deadline_s)
            self.metrics.queue.set(self.encoder.waiting)
        state, context = await self.initializer.submit(np.asarray(probs, np.float32))
        conditioning = Conditioning(*(_read_only(a) for a in (probs, state, context)))
        self.cache.put(key, conditioning)
        return conditioning

    async def _encode(self, images: list[bytes]) -> list[np.ndarray | Exception]:
        try:
            return list(await self.models.encode(images))
        except ModelError:
            if len(images) == 1:
                raise
        # The encoder refused the batch: one image it cannot read must not fail the others'
        # requests, so each goes again alone and fails (or not) on its own.
        alone = await asyncio.gather(*(self.models.encode([image]) for image in images), return_exceptions=True)
        for outcome in alone:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # a cancellation is nobody's image's fault: it goes on up
        return [probs if isinstance(probs, Exception) else cast(np.ndarray, probs)[0] for probs in alone]

    async def _init_rows(self, rows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        state, context = await self.models.init(np.stack(rows))
        return list(zip(state, context, strict=True))

    async def _decode(
        self,
        conditioning: Conditioning,
        options: DecodingOptions,
        key: str,
        deadline_s: float | None = None,
        on_caption: Callable[[tuple[int, ...]], None] | None = None,
    ) -> list[Hypothesis]:
        search = self.captioner.search(
            conditioning.state, conditioning.context, conditioning.probs, options, key, on_caption
        )
        self.metrics.searches.inc()
        try:
            await self.scheduler.run(search, deadline_s)
        finally:
            self.metrics.searches.dec()
        return search.results()

    def _box_counts(self, template: Template) -> frozenset[int] | None:
        """A multi-panel layout fixes the count (one box per panel); else the counts its real memes use."""
        return template_box_counts(template.box_counts, self.layouts.panels(template.name))

    def _meme(self, rank: int, hypothesis: Hypothesis) -> Meme:
        boxes = self.captioner.boxes(hypothesis.ids)
        return Meme(rank, c.BOX_SEPARATOR.join(boxes), boxes, round(hypothesis.score, 4))

    def _one_hot(self, template_id: int) -> np.ndarray:
        probs = np.zeros(len(self.templates), np.float32)
        probs[template_id] = 1.0
        return probs

    def _top_templates(self, probs: np.ndarray, n: int) -> list[tuple[str, float]]:
        order = np.argsort(-probs, kind="stable")[:n]
        return [(self.templates[i].name, round(float(probs[i]), 4)) for i in order]
