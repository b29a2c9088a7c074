"""Meme text on images, checked pixel by pixel: inside its box, white with a dark outline,
smaller when longer, never outside the image; and the layouts it goes into."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from gateway.errors import NotFound
from gateway.rendering.draw import clean, draw_captions, fit, panel_style, stroke_for
from gateway.rendering.fonts import MemeFont, font_file
from gateway.rendering.layout import Layouts, default_layout
from gateway.rendering.output import open_for_drawing
from gateway.rendering.renderer import LIST_AGAIN_AFTER_S, Renderer, RenderSpec

BACKGROUND = (70, 110, 150)  # a colour neither the fill (white) nor the outline (black) is near


@pytest.fixture(scope="module")
def font() -> MemeFont:
    return MemeFont(font_file())


def blank(width=500, height=500, colour=BACKGROUND) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def changed(image: Image.Image, colour=BACKGROUND) -> np.ndarray:
    """Mask of the pixels drawing touched."""
    return np.any(np.asarray(image, dtype=np.int16) != np.array(colour, dtype=np.int16), axis=2)


def bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def inside(mask: np.ndarray, rect: tuple[int, int, int, int]) -> bool:
    left, top, right, bottom = rect
    outside = mask.copy()
    outside[top:bottom, left:right] = False
    return not outside.any()


def test_text_is_drawn_inside_its_boxes_white_with_a_dark_outline(font):
    image = blank()
    boxes = default_layout(2)
    draw_captions(image, ["one does not simply", "write a renderer"], boxes, font=font)
    pixels = np.asarray(image, dtype=np.int16)
    mask = changed(image)
    rects = [box.pixels(*image.size) for box in boxes]
    union = np.zeros_like(mask)
    for left, top, right, bottom in rects:
        region = pixels[top:bottom, left:right]
        white = np.all(region >= 235, axis=2)
        dark = np.all(region <= 40, axis=2)
        assert white.sum() > 500, "the box has (white) text"
        assert dark.sum() > 0.3 * white.sum(), "and an outline"
        union[top:bottom, left:right] = True
    assert mask.any() and not (mask & ~union).any(), "nothing drawn outside the boxes"

    # Outline contrast: no white text pixel touches the background; the outline is in between.
    white = np.all(pixels >= 235, axis=2)
    background = ~mask
    near_background = np.zeros_like(background)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
        near_background |= np.roll(np.roll(background, dy, axis=0), dx, axis=1)
    assert not (white & near_background).any()


def test_text_sits_at_the_top_of_a_top_box_and_the_bottom_of_a_bottom_box(font):
    image = blank()
    top, bottom = default_layout(2)
    draw_captions(image, ["top", "bottom"], [top, bottom], font=font)
    mask = changed(image)
    top_rect, bottom_rect = top.pixels(500, 500), bottom.pixels(500, 500)
    _, ink_top, _, _ = bounds(mask[: top_rect[3]])
    _, _, _, ink_bottom = bounds(mask[bottom_rect[1] :])
    assert ink_top - top_rect[1] <= 3
    assert bottom_rect[3] - (bottom_rect[1] + ink_bottom) <= 3


def test_long_text_shrinks_and_wraps_instead_of_overflowing(font):
    short = fit(clean("short"), font, 460, 125, largest=60)
    long = fit(clean("this caption goes on and on " * 6), font, 460, 125, largest=60)
    assert short.size == 60 and len(short.lines) == 1
    assert long.size < short.size and len(long.lines) > 1
    assert long.stroke < short.stroke == stroke_for(60), "the outline scales with the font"
    left, top, right, bottom = long.ink
    assert left >= 0 and top >= 0 and right <= 460 and bottom <= 125

    image = blank(320, 240)
    box = default_layout(1)[0]
    draw_captions(image, ["antidisestablishmentarianism" * 4 + " and then some more words " * 12], [box], font=font)
    assert image.size == (320, 240)
    assert inside(changed(image), box.pixels(320, 240)), "a word wider than the box is broken, not cut"


@pytest.mark.parametrize(
    "text",
    [
        "😀🔥 café ñandú 日本語 עברית \u200b\u0000\x07 tab\there",
        "👨\u200d👩\u200d👧\ufe0f",
        "\U0010ffff \udcff",
        "\u202eright to left \u0301\u0301",
    ],
)
def test_any_unicode_draws_without_error_and_stays_inside(font, text):
    image = blank(300, 300)
    boxes = default_layout(1)
    draw_captions(image, [text], boxes, font=font)
    mask = changed(image)
    assert mask.any(), "something is drawn (the font's fallback glyph at least)"
    assert inside(mask, boxes[0].pixels(300, 300))


def test_cleaning_keeps_emoji_sequences_and_drops_controls():
    assert clean("a\x00b\x07c\ud800d") == "A B C D"
    assert clean("👨\u200d👩\u200d👧") == "👨\u200d👩\u200d👧", "the zero-width joiner stays"
    assert clean("  \t\n ") == ""


def test_one_huge_word_is_broken_cheaply(font):
    measured = []
    face = font.at(40)
    original = type(face).getlength

    class Counting(MemeFont):
        def at(self, size):
            found = super().at(size)
            found.getlength = lambda text, *a, **k: (measured.append(1), original(found, text, *a, **k))[1]
            return found

    counting = Counting(font.path)
    fitted = fit(clean("W" * 500), counting, 1900, 500, largest=225)
    assert fitted is not None and len(fitted.lines) > 1
    assert "".join(fitted.lines) == "W" * 500, "broken between characters, nothing lost"
    assert len(measured) < 2000, f"{len(measured)} measurements: the break point is searched, not scanned"


def test_case_upper_by_default_or_kept(font):
    assert clean("Hello  wörld\n") == "HELLO WÖRLD"
    assert clean("Hello  wörld\n", "keep") == "Hello wörld"
    upper, kept = blank(), blank()
    draw_captions(upper, ["meme"], default_layout(1), font=font)
    draw_captions(kept, ["meme"], default_layout(1), "keep", font=font)
    assert not np.array_equal(np.asarray(upper), np.asarray(kept))


def test_tiny_images_and_empty_boxes_do_not_fail(font):
    for size in ((1, 1), (7, 40), (40, 7)):
        image = blank(*size)
        draw_captions(image, ["hello", "world", "again"], default_layout(3), font=font)
        assert image.size == size
    image = blank()
    draw_captions(image, ["", "  "], default_layout(2), font=font)
    assert not changed(image).any()


def test_default_layouts():
    assert default_layout(0) == []
    (one,) = default_layout(1)
    assert one.y < 0.05 and one.valign == "top"
    top, bottom = default_layout(2)
    assert top.y < 0.05 and bottom.y + bottom.height > 0.95 and bottom.valign == "bottom"
    five = default_layout(5)
    tops = [box.y for box in five]
    assert tops == sorted(tops)
    gaps = np.diff(tops)
    assert np.allclose(gaps, gaps[0]), "spread evenly"
    for box in five:
        assert 0 <= box.y and box.y + box.height <= 1 + 1e-9


def test_shipped_layouts_are_inside_the_image_and_used_by_template_name():
    layouts = Layouts.shipped()
    assert {"drake-hotline-bling", "distracted-boyfriend", "two-buttons"} <= set(layouts.names())
    drake = layouts.for_caption("Drake Hotline Bling", 2)
    assert [box.x for box in drake] == [0.51, 0.51], "any spelling of the name"
    assert drake[0].y < drake[1].y
    assert layouts.for_caption("Two-Buttons", 2) == layouts.for_caption("two_buttons", 3)[:2], (
        "fewer boxes: the first ones"
    )
    assert layouts.for_caption("Drake-Hotline-Bling", 4) == default_layout(4), "more boxes than declared: the default"
    assert layouts.for_caption("Success-Kid", 2) == default_layout(2)
    assert layouts.for_caption(None, 1) == default_layout(1)


def test_a_layout_box_outside_the_image_is_refused():
    with pytest.raises(ValueError, match="not inside the image"):
        Layouts.parse({"templates": {"Bad": {"boxes": [{"x": 0.8, "y": 0.1, "width": 0.5, "height": 0.1}]}}})


def test_a_template_layout_puts_text_in_its_panels(font):
    image = blank(600, 600)
    boxes = Layouts.shipped().for_caption("Drake-Hotline-Bling", 2)
    draw_captions(image, ["no", "yes"], boxes, font=font)
    mask = changed(image)
    assert not mask[:, :300].any(), "Drake's text goes in the right-hand panels only"
    assert mask[:300, 300:].any() and mask[300:, 300:].any()


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **kwargs)
    return buffer.getvalue()


def test_output_keeps_the_size_or_shrinks_to_the_limit_in_each_format(font, tmp_path):
    renderer = Renderer(cache_bytes=10_000_000, templates_dir=tmp_path, font=font)
    source = png_bytes(blank(640, 480), format="PNG")
    for kind, pillow in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        data = renderer.render_now(source, RenderSpec(("top", "bottom"), format=kind, max_side=1024))
        out = Image.open(io.BytesIO(data))
        assert (out.format, out.size) == (pillow, (640, 480))
    small = Image.open(io.BytesIO(renderer.render_now(source, RenderSpec(("hi",), max_side=320))))
    assert small.size == (320, 240)
    photo = Image.effect_noise((640, 480), 60).convert("RGB")
    low, high = (
        renderer.render_now(png_bytes(photo, format="PNG"), RenderSpec(("hi",), format="jpeg", quality=q))
        for q in (20, 95)
    )
    assert len(low) < len(high), "quality is applied"


def test_transparent_and_rotated_inputs_are_drawn_upright_on_white(font, tmp_path):
    renderer = Renderer(cache_bytes=10_000_000, templates_dir=tmp_path, font=font)
    clear = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    out = Image.open(io.BytesIO(renderer.render_now(png_bytes(clear, format="PNG"), RenderSpec(("",)))))
    assert out.mode == "RGB" and out.getpixel((100, 50)) == (255, 255, 255)

    wide = blank(300, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated = open_for_drawing(png_bytes(wide, format="JPEG", exif=exif.tobytes()), 1024)
    assert rotated.size == (100, 300)


def test_renders_that_would_finish_after_the_deadline_are_refused_at_once(font, tmp_path):
    import time

    from gateway.engine.admission import Overloaded, WorkerPool

    class SlowRenderer(Renderer):
        def render_now(self, source, spec):
            time.sleep(0.3)
            return super().render_now(source, spec)

    async def scenario():
        renderer = SlowRenderer(
            cache_bytes=10_000_000, templates_dir=tmp_path, font=font, pool=WorkerPool(1, deadline_s=0.5, name="render")
        )
        source = png_bytes(blank(200, 200), format="PNG")
        spec = RenderSpec(("top",))
        await renderer.render(source, "a", spec)  # measured: about 0.3 s a render
        running = asyncio.ensure_future(renderer.render(source, "b", spec))  # a free worker: admitted
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="busy") as refused:  # would end after ~0.6 s > 80% of 0.5 s
            await renderer.render(source, "c", spec)
        assert time.perf_counter() - started < 0.05 and refused.value.status == 503
        assert refused.value.headers["Retry-After"] == "1"
        await running
        assert renderer.pool.pending == 0
        assert (await renderer.render(source, "c", spec)).data  # room again
        # Without a deadline (memefly batch) renders queue instead.
        patient = SlowRenderer(cache_bytes=0, templates_dir=tmp_path, font=font, pool=WorkerPool(1, name="render"))
        done = await asyncio.gather(*(patient.render(source, str(i), spec) for i in range(3)))
        assert len(done) == 3

    asyncio.run(scenario())


def test_render_cache_is_bounded_in_bytes():
    from gateway.rendering.renderer import RenderCache, Rendered

    cache = RenderCache(max_bytes=100)
    for i in range(5):
        cache.put(Rendered(b"x" * 40, "image/png", f"e{i}"))
    assert cache.bytes <= 100 and len(cache) == 2 and cache.get("e4") and not cache.get("e0")
    cache.put(Rendered(b"x" * 101, "image/png", "big"))
    assert cache.get("big") is None, "larger than the whole cache: not kept"


def test_the_same_render_in_flight_is_drawn_once(font, tmp_path):
    renderer = Renderer(cache_bytes=10_000_000, templates_dir=tmp_path, font=font)
    calls = []
    draw = renderer.render_now
    renderer.render_now = lambda source, spec: (calls.append(spec), draw(source, spec))[1]
    source = png_bytes(blank(300, 300), format="PNG")

    async def together():
        return await asyncio.gather(*(renderer.render(source, "sha", RenderSpec(("same",))) for _ in range(4)))

    results = asyncio.run(together())
    assert len(calls) == 1 and len({r.data for r in results}) == 1
    assert sum(not r.cached for r in results) == 1


def test_etag_changes_with_the_layouts(font, tmp_path):
    shipped = Renderer(cache_bytes=0, templates_dir=tmp_path, font=font)
    edited = Renderer(
        cache_bytes=0,
        templates_dir=tmp_path,
        font=font,
        layouts=Layouts.parse(
            {"templates": {"Drake-Hotline-Bling": {"boxes": [{"x": 0.5, "y": 0.0, "width": 0.5, "height": 0.5}]}}}
        ),
    )
    spec = RenderSpec(("a",), layout="Drake-Hotline-Bling")
    assert shipped.etag("sha", spec) != edited.etag("sha", spec)
    assert shipped.etag("sha", spec) == Renderer(cache_bytes=0, templates_dir=tmp_path, font=font).etag("sha", spec)


def test_renders_are_cached_by_what_was_asked(font, tmp_path):
    renderer = Renderer(cache_bytes=10_000_000, templates_dir=tmp_path, font=font)
    source = png_bytes(blank(200, 200), format="PNG")
    spec = RenderSpec(("hello",))
    first = asyncio.run(renderer.render(source, "sha-a", spec))
    again = asyncio.run(renderer.render(source, "sha-a", spec))
    assert not first.cached and again.cached and again.data == first.data and again.etag == first.etag
    other = asyncio.run(renderer.render(source, "sha-a", RenderSpec(("hello",), case="keep")))
    assert other.etag != first.etag and not other.cached
    assert renderer.etag("sha-b", spec) != first.etag


def test_template_images_are_found_by_any_spelling(font, tmp_path):
    renderer = Renderer(cache_bytes=10_000_000, templates_dir=tmp_path, font=font)
    assert renderer.template_image("Grumpy-Cat") is None
    blank(50, 50).save(tmp_path / "Grumpy-Cat.jpg")  # appears later
    assert renderer.template_image("Grumpy-Cat") is None, "misses do not list the folder again at once"
    renderer._listed_at -= LIST_AGAIN_AFTER_S  # a while later: looked up again
    assert renderer.template_image("grumpy cat") == tmp_path / "Grumpy-Cat.jpg"
    (tmp_path / "Grumpy-Cat.jpg").unlink()
    with pytest.raises(NotFound):
        renderer.template_source("Grumpy Cat")


def test_a_word_is_not_broken_while_a_legible_size_fits_it_whole(font):
    # "FORTNITE" at the largest size is wider than this narrow box: a smaller size fits it whole.
    fitted = fit(clean("fortnite"), font, 150, 200, largest=60, legible=16)
    assert fitted.lines == ["FORTNITE"] and 16 <= fitted.size < 60
    two = fit(clean("minecraft chapter 2"), font, 150, 200, largest=60, legible=16)
    assert all(word in " ".join(two.lines).split() for word in ("MINECRAFT", "CHAPTER", "2"))
    # Only when even the legible size cannot hold the word whole is it broken.
    broken = fit(clean("antidisestablishmentarianism"), font, 60, 200, largest=60, legible=16)
    assert len(broken.lines) > 1 and "".join(broken.lines) == "ANTIDISESTABLISHMENTARIANISM"


def test_text_on_a_light_plain_panel_is_dark_and_on_a_photo_light(font):
    white = blank(400, 400, (250, 250, 250))
    draw_captions(white, ["no"], default_layout(1), font=font)
    ink = np.asarray(white.crop(default_layout(1)[0].pixels(400, 400)).convert("L"))
    assert (ink < 60).sum() > 200 and (ink < 60).sum() > 5 * ((ink > 240) & (ink < 250)).sum()

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    assert panel_style(noise, (0, 0, 400, 100)) == "light"
    assert panel_style(white, (0, 300, 400, 400)) == "dark"

    # A layout's own style wins over the measurement: Drake's panels are declared dark.
    drake = Layouts.shipped().for_caption("Drake-Hotline-Bling", 2)
    assert {box.style for box in drake} == {"dark"}
    dark_on_blue = blank()
    draw_captions(dark_on_blue, ["yes"], [drake[0]], font=font)
    pixels = np.asarray(dark_on_blue)[changed(dark_on_blue)]
    assert (pixels.max(axis=1) < 60).sum() > 100, "black letters, as the layout says"
