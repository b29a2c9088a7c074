"""The hostile-but-legal probe corpus: each case builds its request from scratch (nothing is
stored) and says which answers are acceptable. tests/test_hostile.py sends every case to a live
gateway; what held and what did not before is in docs/gateway.md."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

TIME_LIMIT_S = 5.0  # no case may take longer to answer (the animated GIF took 26 s once)


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    build: Callable[[], dict]  # -> httpx request kwargs (files, json, content, headers, data)
    expect: frozenset[int]
    not_in_body: tuple[str, ...] = field(default=())  # what the answer must not echo or leak


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def animated_gif_bomb() -> dict:
    """25 frames of 3000 x 3000 (10x the test gateway's pixel limit over all frames, in 0.5 MB);
    benchmarks/reliability.py sends the full 200 frames of 4000 x 4000."""
    frames = [Image.new("P", (3000, 3000), i) for i in range(25)]
    return {
        "files": {
            "image": ("bomb.gif", _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image/gif")
        }
    }


def png_pixel_bomb() -> dict:
    """A small file that decodes to 30,000 x 30,000 pixels."""
    return {"files": {"image": ("bomb.png", _encoded(Image.new("1", (30000, 30000)), "PNG"), "image/png")}}


def jpeg_header_without_data() -> dict:
    """A valid 4000 x 4000 JPEG header, and the data cut off right after the scan starts."""
    data = _encoded(Image.new("RGB", (4000, 4000), (10, 20, 30)), "JPEG", quality=10)
    return {"files": {"image": ("cut.jpg", data[: data.find(b"\xff\xda") + 20], "image/jpeg")}}


def polyglot_jpeg_html() -> dict:
    """JPEG magic bytes, then HTML and script: must never come back as a page."""
    return {"files": {"image": ("x.jpg", b"\xff\xd8\xff\xe0<html><script>alert(1)</script></html>", "text/html")}}


def nested_json() -> dict:
    return {
        "content": b'{"template": "Grumpy-Cat", "exclude": [' + b"[]," * 1_000_000 + b"[]]}",
        "headers": {"content-type": "application/json"},
    }


def deep_json() -> dict:
    return {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}


def huge_multipart() -> dict:
    """Thousands of small form fields."""
    return {
        "data": {f"f{i}": "x" for i in range(5000)},
        "files": {"image": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")},
    }


def traversal_template() -> dict:
    return {"json": {"template": "../../../../etc/passwd", "boxes": ["a"]}}


def crlf_in_template() -> dict:
    return {"json": {"template": "Grumpy-Cat\r\nX-Injected: yes", "boxes": ["a"]}}


def script_in_boxes() -> dict:
    return {"json": {"template": "Grumpy-Cat", "boxes": ["<script>alert(1)</script>"], "format": "png"}}


def template_image_traversal() -> dict:
    return {}  # all in the path


CASES = [
    Case("animated GIF over the frame budget", "POST", "/memes", animated_gif_bomb, frozenset({413})),
    Case("PNG decompression bomb", "POST", "/memes", png_pixel_bomb, frozenset({413})),
    Case("JPEG header, no data", "POST", "/memes", jpeg_header_without_data, frozenset({400})),
    Case("JPEG/HTML polyglot", "POST", "/memes", polyglot_jpeg_html, frozenset({400}), ("<script>",)),
    Case("a million nested empty lists", "POST", "/memes", nested_json, frozenset({400, 413})),
    Case("100,000 open brackets", "POST", "/memes", deep_json, frozenset({400, 413})),
    Case("5,000 form fields", "POST", "/memes", huge_multipart, frozenset({400})),
    Case("path traversal in a template name", "POST", "/render", traversal_template, frozenset({404, 422}), ("root:",)),
    Case("CRLF in a template name", "POST", "/render", crlf_in_template, frozenset({404, 422})),
    Case("script in a caption", "POST", "/render", script_in_boxes, frozenset({200, 404})),
    Case(
        "traversal in a template image path",
        "GET",
        "/templates/..%2F..%2Fetc%2Fpasswd/image",
        template_image_traversal,
        frozenset({404}),
        ("root:",),
    ),
]


def describe(case: Case) -> str:
    return json.dumps({"name": case.name, "method": case.method, "path": case.path})
