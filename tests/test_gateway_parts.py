"""The gateway's parts on their own: scheduler, micro-batcher, cache, tensor protos, settings, image checks."""

from __future__ import annotations

import asyncio
import io
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image, ImageFile
from tensorflow.core.framework import tensor_pb2, types_pb2

from gateway.backends.tensors import from_proto, to_proto
from gateway.engine.admission import Overloaded
from gateway.engine.batcher import MicroBatcher
from gateway.engine.cache import LruCache
from gateway.engine.images import check_image, sniff_format
from gateway.engine.scheduler import DecodeScheduler
from gateway.errors import BadImage, ImageTooLarge, ModelUnavailable, UnsupportedImage
from gateway.settings import Settings


class CountingSearch:
    """A search that needs `steps` steps of `rows` rows and checks it gets its own rows back."""

    def __init__(self, rows: int, steps: int, tag: float):
        self._rows, self.steps_left, self.tag = rows, steps, tag
        self.done = False
        self.advanced = 0

    @property
    def rows(self):
        return 0 if self.done else self._rows

    def inputs(self):
        n = self._rows
        return np.zeros(n, np.int32), np.full((n, 2), self.tag, np.float32), np.zeros((n, 1), np.float32)

    def advance(self, top_ids, top_log_probs, state):
        assert state.shape == (self._rows, 2) and np.all(state == self.tag + 1)
        self.advanced += 1
        self.steps_left -= 1
        self.done = self.steps_left == 0


class CountingTable:
    """The search table's part the scheduler uses, for searches that count their steps."""

    def __init__(self):
        self.searches = set()

    def add(self, search):
        self.searches.add(search)

    def remove(self, search):
        self.searches.discard(search)

    @property
    def live_rows(self):
        return sum(s.rows for s in self.searches)

    def inputs(self, searches):
        parts = [s.inputs() for s in searches]
        return searches, *(np.concatenate([p[i] for p in parts]) for i in range(3))

    def advance(self, searches, top_ids, top_log_probs, state):
        offset = 0
        for search in searches:
            if search.done:
                continue
            rows = slice(offset, offset + search.rows)
            offset += search.rows
            search.advance(top_ids[rows], top_log_probs[rows], state[rows])
        return []


def counting_scheduler(step, **options):
    return DecodeScheduler(step, table=CountingTable(), **options)


class RecordingStep:
    def __init__(self, delay_s=0.0, fail=None):
        self.batches: list[int] = []
        self.delay_s, self.fail = delay_s, fail

    async def __call__(self, tokens, state, context):
        self.batches.append(len(tokens))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise self.fail
        return np.zeros((len(tokens), 3), np.int32), np.zeros((len(tokens), 3), np.float32), state + 1


async def run_all(scheduler, searches):
    scheduler.start()
    try:
        return await asyncio.gather(*(scheduler.run(s) for s in searches), return_exceptions=True)
    finally:
        await scheduler.stop()


def test_continuous_batching_steps_all_searches_together():
    step = RecordingStep(delay_s=0.001)
    searches = [CountingSearch(rows=3, steps=4, tag=i) for i in range(5)]
    asyncio.run(run_all(counting_scheduler(step, max_rows=100), searches))
    assert all(s.done and s.advanced == 4 for s in searches)
    assert step.batches[0] == 15 and len(step.batches) <= 5


def test_batch_cap_is_respected_and_nobody_starves():
    step = RecordingStep()
    searches = [CountingSearch(rows=4, steps=6, tag=i) for i in range(7)]
    asyncio.run(run_all(counting_scheduler(step, max_rows=10), searches))
    assert max(step.batches) <= 10
    assert all(s.done for s in searches)


async def until(condition, timeout_s: float = 5.0) -> bool:
    """Whether CONDITION() came true within TIMEOUT_S, checked as the event loop runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def test_admission_refuses_at_once_what_the_queue_cannot_finish_in_time():
    async def scenario():
        scheduler = counting_scheduler(RecordingStep(delay_s=0.02), max_rows=8, pipeline=1)
        scheduler.start()
        try:
            await scheduler.run(CountingSearch(rows=4, steps=10, tag=0))  # measures calls and steps
            alone = scheduler.expected_seconds(4)
            assert 0 < alone < 1.0
            # Twelve searches of 4 rows: 6 calls a step, 10 steps, 20 ms a call: about 1.2 s.
            queue = [asyncio.ensure_future(scheduler.run(CountingSearch(rows=4, steps=10, tag=i))) for i in range(12)]
            # Once the queued searches join the scheduler's rows: 52 rows in calls of 8, 7 calls a step.
            assert await until(lambda: scheduler.expected_seconds(4) > 5 * alone)
            started = asyncio.get_running_loop().time()
            with pytest.raises(Overloaded, match="busy") as refused:
                await scheduler.run(CountingSearch(rows=4, steps=10, tag=99), deadline_s=0.5)
            assert asyncio.get_running_loop().time() - started < 0.05  # at once, not after waiting
            assert refused.value.status == 503 and refused.value.headers["Retry-After"]
            admitted = await scheduler.run(CountingSearch(rows=4, steps=10, tag=98), deadline_s=30.0)
            assert admitted.done
            await asyncio.gather(*queue)
            # However bad the estimate, a request to an empty queue is admitted (and refreshes it).
            for _ in range(64):  # a model server that hung for a while: every call measured slow
                scheduler.cost.add(4, 100.0)
            stale = scheduler.cost.seconds(4)
            assert (await scheduler.run(CountingSearch(rows=4, steps=2, tag=97), deadline_s=1.0)).done
            assert scheduler.cost.seconds(4) < stale
        finally:
            await scheduler.stop()

    asyncio.run(scenario())


def test_without_continuous_batching_one_search_per_call():
    step = RecordingStep()
    searches = [CountingSearch(rows=3, steps=2, tag=i) for i in range(4)]
    asyncio.run(run_all(counting_scheduler(step, max_rows=100, continuous=False), searches))
    assert step.batches == [3] * 8


def test_a_failed_step_fails_only_that_calls_searches():
    async def scenario():
        step = RecordingStep(fail=ModelUnavailable("gone"))
        scheduler = counting_scheduler(step, max_rows=100)
        results = await run_all(scheduler, [CountingSearch(2, 3, 0), CountingSearch(2, 3, 1)])
        return results, scheduler

    results, scheduler = asyncio.run(scenario())
    assert all(isinstance(r, ModelUnavailable) for r in results)
    assert scheduler.depth == 0


class BrokenSearch(CountingSearch):
    def inputs(self):
        raise RuntimeError("a bug in one search")


@pytest.mark.parametrize("pipeline", [1, 2])
def test_a_broken_search_fails_alone_and_the_loop_goes_on(pipeline):
    async def scenario():
        scheduler = counting_scheduler(RecordingStep(), max_rows=100, pipeline=pipeline)
        first = await asyncio.wait_for(run_all(scheduler, [BrokenSearch(2, 3, 0)]), 10)  # not a hang
        healthy = CountingSearch(2, 3, 1)
        second = await asyncio.wait_for(run_all(scheduler, [healthy]), 10)  # the same scheduler, started again
        return first, second, healthy

    first, second, healthy = asyncio.run(scenario())
    assert isinstance(first[0], RuntimeError)
    assert healthy.done and second[0] is healthy


def test_a_search_wider_than_the_cap_is_a_client_error():
    from gateway.errors import InvalidRequest

    async def scenario():
        return await run_all(counting_scheduler(RecordingStep(), max_rows=4), [CountingSearch(5, 1, 0)])

    (result,) = asyncio.run(scenario())
    assert isinstance(result, InvalidRequest) and result.status == 422


def test_a_cancelled_request_leaves_the_batch():
    async def scenario():
        step = RecordingStep(delay_s=0.01)
        scheduler = counting_scheduler(step, max_rows=100)
        scheduler.start()
        long = CountingSearch(rows=5, steps=10_000, tag=0)
        short = CountingSearch(rows=2, steps=3, tag=1)
        task = asyncio.create_task(scheduler.run(long))
        await scheduler.run(short)
        assert scheduler.depth == 1 and scheduler.live_rows == 5
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        depth = scheduler.depth
        await scheduler.stop()
        return depth, step.batches

    depth, batches = asyncio.run(scenario())
    assert depth == 0
    assert 7 in batches  # the two searches shared calls


def test_real_searches_share_calls_and_a_failing_or_cancelled_one_leaves_alone():
    """The scheduler's own search table: searches of both kinds share each call; one whose
    refusal check raises fails alone, one cancelled mid-way frees its rows, and the others
    return exactly what each returns stepped alone."""
    from test_search_equivalence import VOCAB, HashModel

    from memefly.decoding.captioner import run_searches
    from memefly.decoding.constraints import Constraints
    from memefly.decoding.options import DecodingOptions
    from memefly.decoding.search import make_search

    def search(options, accept=lambda ids: True):
        rules = Constraints(VOCAB, max_length=options.max_length, box_counts={1, 2})
        return make_search(np.zeros(1, np.float32), np.zeros(3, np.float32), options, rules, accept)

    def refusal_check_that_breaks(ids):
        raise RuntimeError("a bug in one request's refusal check")

    beams, sampled = DecodingOptions(num_beams=5, max_length=8), DecodingOptions(seed=3, max_length=8)
    model = HashModel(7)

    async def step(tokens, state, context):
        await asyncio.sleep(0.001)
        return model.step(tokens, state, context)

    async def scenario():
        scheduler = DecodeScheduler(step, max_rows=100)
        scheduler.start()
        healthy = [search(beams), search(sampled)]
        broken = search(beams, refusal_check_that_breaks)
        endless = search(DecodingOptions(num_beams=6, max_length=64, min_length=64))
        cancelled = asyncio.ensure_future(scheduler.run(endless))
        results = await asyncio.gather(*(scheduler.run(s) for s in (*healthy, broken)), return_exceptions=True)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        left = scheduler.depth, scheduler.live_rows
        await scheduler.stop()
        return healthy, results, left

    healthy, results, left = asyncio.run(scenario())
    assert results[:2] == healthy and isinstance(results[2], RuntimeError)
    assert left == (0, 0)
    for options, stepped_together in zip((beams, sampled), healthy, strict=True):
        alone = search(options)
        run_searches([alone], HashModel(7).step)
        assert stepped_together.results() == alone.results()


def test_micro_batcher_groups_and_splits_results():
    calls = []

    async def double(items):
        calls.append(list(items))
        return [2 * x for x in items]

    async def scenario():
        batcher = MicroBatcher(double, max_batch=4, max_wait_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [2 * i for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]


def test_admission_learns_how_much_later_arrivals_slow_a_search_down():
    async def scenario():
        scheduler = counting_scheduler(RecordingStep(delay_s=0.01), max_rows=4, pipeline=1)
        scheduler.start()
        try:
            cold = scheduler.correction.factor
            for tag in range(20):  # alone: each takes what its estimate says
                await scheduler.run(CountingSearch(rows=4, steps=5, tag=tag))
            assert scheduler.correction.factor < 1.5 < cold  # a cold scheduler errs on the safe side
            # Each one admitted alone, then joined by seven more: 4 calls a step, not 1.
            first = asyncio.ensure_future(scheduler.run(CountingSearch(rows=4, steps=10, tag=10)))
            await asyncio.sleep(0.005)
            later = [
                asyncio.ensure_future(scheduler.run(CountingSearch(rows=4, steps=10, tag=20 + i))) for i in range(3)
            ]
            await asyncio.gather(first, *later)
            assert scheduler.correction.factor > 1.5  # learnt: the next estimates allow for it
        finally:
            await scheduler.stop()

    asyncio.run(scenario())


def test_a_render_whose_client_left_holds_its_worker_until_drawn():
    import time

    from gateway.engine.admission import WorkerPool

    async def scenario():
        pool = WorkerPool(1, deadline_s=0.25, name="render")
        await pool.run(time.sleep, 0.1)  # measured: 0.1 s a job
        job = asyncio.ensure_future(pool.run(time.sleep, 0.3))
        await asyncio.sleep(0.02)
        job.cancel()  # its client went away; the thread still draws
        await asyncio.sleep(0.02)
        assert pool.pending == 1
        with pytest.raises(Overloaded):  # the one worker is busy: 2 x 0.1 s > 80% of 0.25 s
            await pool.run(time.sleep, 0.1)
        assert await until(lambda: pool.pending == 0)  # the cancelled job's thread finishes its 0.3 s
        await pool.run(time.sleep, 0.01)
        pool.close()

    asyncio.run(scenario())


def test_cost_model_fits_fixed_and_per_item_cost_and_errs_high_from_one_size():
    from gateway.engine.admission import CostModel

    cost = CostModel()
    assert cost.seconds(10) is None
    for size in (10, 100, 10, 100, 50):
        cost.add(size, 0.01 + 0.001 * size)
    assert cost.seconds(1000) == pytest.approx(1.01)
    one_size = CostModel()
    for _ in range(3):
        one_size.add(10, 0.02)  # fixed and per-item cost cannot be told apart: all per item
    assert one_size.seconds(100) == pytest.approx(0.2)
    one_size.add(10, 5.0)  # one call that hung is not the usual cost
    assert one_size.seconds(100) == pytest.approx(0.2)


def test_micro_batcher_refuses_at_once_what_its_queue_cannot_encode_in_time():
    async def scenario():
        async def slow(items):
            await asyncio.sleep(0.1)
            return items

        batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0.0, max_concurrent=1)
        batcher.start()
        try:
            assert await batcher.submit(1, deadline_s=0.01) == 1  # an idle batcher takes anything (and measures it)
            queued = [asyncio.ensure_future(batcher.submit(i, deadline_s=10.0)) for i in range(3)]
            await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Overloaded, match="busy") as refused:  # ~0.4 s ahead of it
                await batcher.submit(9, deadline_s=0.3)
            assert loop.time() - started < 0.05 and refused.value.headers["Retry-After"] == "1"
            assert await batcher.submit(8, deadline_s=10.0) == 8  # room before a later deadline
            assert await asyncio.gather(*queued) == [0, 1, 2]
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_micro_batcher_learns_what_its_estimates_miss():
    async def scenario():
        delay = {"s": 0.02}

        async def call(items):
            await asyncio.sleep(delay["s"])
            return items

        batcher = MicroBatcher(call, max_batch=1, max_wait_s=0.0, max_concurrent=1)
        batcher.start()
        try:
            for i in range(20):  # one at a time: each takes what it was estimated to
                await batcher.submit(i)
            assert batcher.correction.factor < 1.5
            delay["s"] = 0.1  # the model slowed down: the latest calls' costs fall short for a while
            await asyncio.gather(*(batcher.submit(i) for i in range(10)))
            assert batcher.correction.factor > 1.5
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_micro_batcher_passes_errors_to_every_caller():
    async def broken(items):
        raise ModelUnavailable("down")

    async def scenario():
        batcher = MicroBatcher(broken, max_batch=8, max_wait_s=0.01)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        await batcher.stop()
        return results

    assert all(isinstance(r, ModelUnavailable) for r in asyncio.run(scenario()))


def test_cache_is_a_bounded_lru_with_counters():
    cache = LruCache(max_entries=2)
    cache.put("a", np.array([1.0, 0.0]))
    cache.put("b", np.array([0.0, 1.0]))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", np.array([0.5, 0.5]))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    assert "b" not in cache and "a" in cache and (cache.hits, cache.misses) == (3, 1)  # peeking counts nothing


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([1, -2, 3], dtype=np.int32),
        np.zeros((0, 5), dtype=np.float32),
        np.array([b"caf\xc3\xa9", b""], dtype=object),
        np.arange(6, dtype=np.uint8).reshape(1, 2, 3),
        np.array([[0.5, -2.0], [65504.0, 1e-3]], dtype=np.float16),
    ],
)
def test_tensor_protos_round_trip(value):
    back = from_proto(to_proto(value))
    assert back.shape == value.shape
    assert back.tolist() == value.tolist()


def test_tensor_protos_agree_with_tensorflow_both_ways():
    import tensorflow as tf

    value = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    assert np.array_equal(tf.make_ndarray(to_proto(value)), value)
    assert np.array_equal(from_proto(tf.make_tensor_proto(value)), value)
    strings = np.array([b"a", b"bc"], dtype=object)
    assert tf.make_ndarray(to_proto(strings)).tolist() == [b"a", b"bc"]
    # Typed value fields, and TensorFlow's "last value repeats" shorthand.
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[7, 8])
    proto.tensor_shape.dim.add(size=4)
    assert from_proto(proto).tolist() == [7, 8, 8, 8]
    # float16 as TF Serving sends it by default: the bit patterns in half_val.
    half = np.array([0.5, -2.0, 65504.0], np.float16)
    assert from_proto(tf.make_tensor_proto(half)).tolist() == half.tolist()
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, half_val=half.view(np.uint16).tolist())
    proto.tensor_shape.dim.add(size=3)
    assert from_proto(proto).tolist() == half.tolist() == tf.make_ndarray(proto).tolist()


def test_strings_packed_in_tensor_content_are_read_as_tensorflow_reads_them():
    """TF Serving's --enable_serialization_as_tensor_content packs strings too (EncodeStringList:
    the varint lengths, then the bytes); TensorFlow's C++ parser is the reference."""
    import tensorflow as tf

    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_content=b"\x00\x05\xac\x02" + b"Drake" + b"x" * 300
    )
    proto.tensor_shape.dim.add(size=3)
    expected = [b"", b"Drake", b"x" * 300]
    assert tf.io.parse_tensor(proto.SerializeToString(), tf.string).numpy().tolist() == expected
    assert from_proto(proto).tolist() == expected
    for broken in (b"\x05Dra", b"\x00\x05\xac", b"\x00\x01\x01abc"):
        proto.tensor_content = broken
        with pytest.raises(ValueError, match="tensor_content"):
            from_proto(proto)


def test_settings_come_from_the_environment():
    settings = Settings.from_env(
        {
            "MEMEFLY_BACKEND": "grpc",
            "MEMEFLY_MODEL_VERSION": "3",
            "MEMEFLY_DECODER_MAX_ROWS": "256",
            "MEMEFLY_CONTINUOUS_BATCHING": "false",
            "MEMEFLY_MODELS_DIR": "/srv/models",
        }
    )
    assert settings.backend == "grpc" and settings.model_version == 3 and settings.decoder_max_rows == 256
    assert settings.continuous_batching is False and str(settings.models_dir) == "/srv/models"
    assert Settings.from_env({"MEMEFLY_MODEL_VERSION": "latest"}).model_version is None
    assert Settings.from_env({"MEMEFLY_BACKEND": "grpc"}, backend="inprocess").backend == "inprocess"
    # Unset, empty, of another case or no setting at all: the defaults.
    quiet = Settings.from_env({"MEMEFLY_WORKERS": "", "memefly_backend": "grpc", "MEMEFLY_ENCODER_WEIGHTS": "random"})
    assert quiet == Settings()
    # The errors name the variable and its value, or say what the check wants.
    for environ, message in (
        ({"MEMEFLY_DECODER_MAX_ROWS": "many"}, "MEMEFLY_DECODER_MAX_ROWS='many' is not a valid int"),
        ({"MEMEFLY_ADMISSION_CONTROL": "maybe"}, "MEMEFLY_ADMISSION_CONTROL='maybe' is not a valid bool"),
        ({"MEMEFLY_MODEL_VERSION": "newest"}, "MEMEFLY_MODEL_VERSION='newest' is not a valid int | None"),
        ({"MEMEFLY_BACKEND": "tfserving"}, "MEMEFLY_BACKEND must be 'grpc' or 'inprocess', not 'tfserving'"),
        ({"MEMEFLY_DECODER_MAX_ROWS": "8"}, "MEMEFLY_DECODER_MAX_ROWS must be at least 64"),
    ):
        with pytest.raises(ValueError) as error:
            Settings.from_env(environ)
        assert str(error.value).startswith(message), str(error.value)
    with pytest.raises(ValueError, match="^encoder_max_batchh: Extra inputs are not permitted"):
        Settings.from_env({}, encoder_max_batchh=8)  # a misspelled override is named
    with pytest.raises(ValueError, match="MEMEFLY_WORKERS must be at least 1"):
        Settings().replace(workers=0)  # a copy is checked as a new one is


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_image_types_come_from_the_bytes():
    image = Image.new("RGB", (20, 10), "blue")
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        assert sniff_format(encoded(image, fmt)) == fmt
    assert sniff_format(b"%PDF-1.4") is None


def animation(fmt: str, frames: int, size: tuple[int, int]) -> bytes:
    images = [Image.new("RGB", size, (40 * i % 256, 255 - 40 * i % 256, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], duration=100)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_an_animation_reaches_the_encoder_as_one_still_frame(fmt):
    checked = check_image(animation(fmt, 5, (60, 40)), max_bytes=1_000_000, max_pixels=1_000_000)
    assert checked.reencoded and sniff_format(checked.data) == "PNG"
    still = Image.open(io.BytesIO(checked.data))
    assert getattr(still, "n_frames", 1) == 1 and still.size == (60, 40)
    assert still.convert("RGB").getpixel((5, 5)) == (0, 255, 0)  # the first frame


@pytest.mark.slow
def test_too_many_frames_are_refused_from_the_headers_before_decoding(monkeypatch):
    """200 frames of 4000 x 4000 in 2.6 MB: refused without decoding one of them."""
    frames = [Image.new("P", (4000, 4000), i) for i in range(200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self, *a: decoded.append(self))
    with pytest.raises(ImageTooLarge, match="200 frames"):
        check_image(buffer.getvalue(), max_bytes=10_000_000, max_pixels=40_000_000)
    assert not decoded


def test_image_checks():
    limits = {"max_bytes": 1_000_000, "max_pixels": 1_000_000}
    image = Image.new("RGB", (200, 100), (200, 30, 30))
    plain = check_image(encoded(image, "PNG"), **limits)
    assert not plain.reencoded and (plain.width, plain.height) == (200, 100)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    rotated = check_image(encoded(image, "JPEG", exif=exif), **limits)
    assert rotated.reencoded and (rotated.width, rotated.height) == (100, 200)
    assert Image.open(io.BytesIO(rotated.data)).size == (100, 200)

    webp = check_image(encoded(image, "WEBP"), **limits)
    assert webp.reencoded and sniff_format(webp.data) == "PNG"
    cmyk = check_image(encoded(image.convert("CMYK"), "JPEG"), **limits)
    assert cmyk.reencoded and Image.open(io.BytesIO(cmyk.data)).mode == "RGB"

    with pytest.raises(ImageTooLarge, match="pixels"):
        check_image(encoded(Image.new("1", (2000, 1000)), "PNG"), **limits)
    with pytest.raises(ImageTooLarge, match="bytes"):
        check_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 1_000_001, **limits)
    with pytest.raises(UnsupportedImage):
        check_image(b"GIF90a...", **limits)
    with pytest.raises(BadImage, match="truncated or corrupt"):
        check_image(encoded(Image.effect_noise((300, 300), 50).convert("RGB"), "JPEG")[:2000], **limits)


@contextmanager
def gateway_without_models(tmp_path, **settings):
    """A live gateway whose model servers are unreachable: enough for what happens before a request is handled."""
    from gateway_harness import running_gateway

    settings = Settings.from_env({}).replace(
        backend="grpc",
        encoder_target="127.0.0.1:1",
        decoder_target="127.0.0.1:1",
        templates_dir=tmp_path,
        **settings,
    )
    with running_gateway(settings, wait=False) as gateway:
        yield gateway, int(gateway.url.rsplit(":", 1)[1])


@pytest.mark.slow
def test_headers_that_trickle_in_or_never_come_get_408_and_the_connection_is_closed(tmp_path):
    import socket
    import time

    with gateway_without_models(tmp_path, header_timeout_s=1.0) as (gateway, port):
        # slowloris: a byte of headers at a time, each well within any read timeout
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            sock.settimeout(0.3)
            answer = b""
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                try:
                    sock.sendall(bytes([byte]))
                    answer += sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if answer:
                    break
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert 0.9 <= time.monotonic() - started < 5
        # a connection that sends nothing is closed too, without a word (it may be a preconnect)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(4096) == b""
            assert 0.9 <= time.monotonic() - started < 5
        # headers that come in time are not affected, on a kept-alive connection either
        with gateway.client() as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(1.5)
            assert client.get("/healthz").status_code == 200


def test_a_body_that_trickles_in_gets_408_and_the_connection_is_freed(tmp_path):
    import socket
    import time

    with gateway_without_models(tmp_path, body_timeout_s=1.0) as (gateway, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /render HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"boxes": ["a"], '
            )
            started = time.monotonic()
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
        assert 0.9 <= time.monotonic() - started < 5
        # A body that comes in time is not affected, and neither is waiting after it.
        with gateway.client() as client:
            response = client.post("/render", json={"boxes": ["a"], "template": "Nope"})
            assert response.status_code == 404


def test_an_image_the_encoder_refuses_fails_alone_and_a_cancellation_goes_on_up():
    """A refused encoder batch goes again image by image: the unreadable one gets its error, the
    others their probabilities; a cancellation meanwhile is nobody's image's fault."""
    from types import SimpleNamespace

    from gateway.engine.service import MemeService
    from gateway.errors import ModelError

    class Models:
        def __init__(self, one_image):
            self.one_image = one_image

        async def encode(self, images):
            if len(images) > 1:
                raise ModelError("the batch has an image the encoder cannot read")
            return await self.one_image(images[0])

    async def readable_unless_bad(image):
        if image == b"bad":
            raise ModelError("cannot read this one")
        return np.array([[float(len(image))]])

    async def cancelled(image):
        raise asyncio.CancelledError

    service = SimpleNamespace(models=Models(readable_unless_bad))
    out = asyncio.run(MemeService._encode(service, [b"ok", b"bad", b"fine"]))
    assert out[0].tolist() == [2.0] and isinstance(out[1], ModelError) and out[2].tolist() == [4.0]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(MemeService._encode(SimpleNamespace(models=Models(cancelled)), [b"a", b"b"]))
