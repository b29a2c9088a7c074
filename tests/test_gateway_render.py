"""Rendered memes over HTTP: POST /memes with render=, POST /render, template images, the page."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from urllib.parse import unquote

import numpy as np
import pytest
from gateway_harness import gateway_settings, running_gateway
from PIL import Image

TEMPLATE = "Grumpy-Cat"


@pytest.fixture(scope="module")
def templates_dir(tiny_dataset):
    return tiny_dataset / "dataset" / "templates" / "img"


@pytest.fixture(scope="module", params=["inprocess", "grpc"])
def gateway(request, served_models_dir, loopback, templates_dir):
    target = loopback.target if request.param == "grpc" else None
    settings = gateway_settings(
        served_models_dir, request.param, target, templates_dir=templates_dir, render_max_side=800
    )
    with running_gateway(settings) as running:
        yield running


@pytest.fixture
def client(gateway):
    with gateway.client() as client:
        yield client


def picture(response) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def jpeg(width=320, height=240, colour=(70, 110, 150)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_memes_render_returns_the_ranked_meme_drawn_on_the_upload(client):
    upload = jpeg()
    fields = {"num_beams": "5", "num_return_sequences": "5"}
    listed = client.post("/memes", files={"image": ("a.jpg", upload)}, data=fields).json()["memes"]
    for rank, kind, pillow in ((1, "png", "PNG"), (3, "jpeg", "JPEG"), (2, "webp", "WEBP")):
        response = client.post(
            "/memes", files={"image": ("a.jpg", upload)}, data={**fields, "render": kind, "rank": str(rank)}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == f"image/{kind}"
        assert json.loads(unquote(response.headers["x-memefly-boxes"])) == listed[rank - 1]["boxes"]
        image = picture(response)
        assert (image.format, image.size) == (pillow, (320, 240)), "the image keeps its size"
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        assert (pixels.min(axis=2) > 220).sum() > 50, "white text was drawn"


def test_memes_render_on_a_named_template_uses_its_blank_image(client, templates_dir):
    response = client.post("/memes", json={"template": TEMPLATE, "render": "png"})
    assert response.status_code == 200, response.text
    blank = Image.open(templates_dir / f"{TEMPLATE}.jpg")
    drawn = picture(response)
    assert drawn.size == blank.size
    difference = np.abs(np.asarray(drawn.convert("RGB"), np.int16) - np.asarray(blank.convert("RGB"), np.int16))
    assert (difference.max(axis=2) > 100).mean() > 0.005, "text on it"
    assert unquote(response.headers["x-memefly-template"]) == TEMPLATE


def test_memes_render_refuses_bad_rank_and_size(client):
    too_far = client.post("/memes", json={"template": TEMPLATE, "render": "png", "rank": 4, "num_return_sequences": 3})
    assert too_far.status_code == 422 and "rank 4" in too_far.text
    too_big = client.post("/memes", json={"template": TEMPLATE, "render": "png", "max_size": 5000})
    assert too_big.status_code == 422 and "800-pixel limit" in too_big.text
    bad_format = client.post("/memes", json={"template": TEMPLATE, "render": "gif"})
    assert bad_format.status_code == 422


def test_render_draws_given_boxes_on_an_upload_or_a_template(client, templates_dir):
    upload = jpeg(500, 500)
    multipart = client.post(
        "/render",
        files={"image": ("a.jpg", upload)},
        data={"boxes": ["one does not simply", "draw memes"], "format": "jpeg", "quality": "90"},
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.headers["content-type"] == "image/jpeg" and picture(multipart).size == (500, 500)

    as_json = client.post(
        "/render",
        json={
            "image_base64": base64.b64encode(upload).decode(),
            "boxes": ["one does not simply", "draw memes"],
            "format": "jpeg",
            "quality": 90,
        },
    )
    assert as_json.content == multipart.content, "the same request, either encoding, the same image"

    template = client.post("/render", json={"template": "grumpy cat", "boxes": ["no"], "max_size": 100})
    assert template.status_code == 200, template.text
    assert max(picture(template).size) == 100


def test_render_sends_an_etag_renders_once_and_knows_what_the_client_has(client):
    request = {"template": TEMPLATE, "boxes": ["cache", "me"]}
    first = client.post("/render", json=request)
    second = client.post("/render", json=request)
    assert first.headers["etag"] == second.headers["etag"]
    assert second.headers["x-render-cache"] == "hit" and second.content == first.content
    # RFC 9110: a matching If-None-Match on POST is 412 (304 is for GET), with no image.
    unchanged = client.post("/render", json=request, headers={"If-None-Match": f'"x", {first.headers["etag"]}'})
    assert (
        unchanged.status_code == 412 and unchanged.content == b"" and unchanged.headers["etag"] == first.headers["etag"]
    )
    other = client.post("/render", json={**request, "case": "keep"}, headers={"If-None-Match": first.headers["etag"]})
    assert other.status_code == 200 and other.headers["etag"] != first.headers["etag"]


def test_an_upload_the_client_has_is_not_even_decoded(client, gateway):
    from gateway.engine.images import sha256
    from gateway.rendering.renderer import RenderSpec

    broken = jpeg()[:300]  # would be 400 if decoded
    spec = RenderSpec(("x",), None, "png", "upper", 800, 85)
    etag = gateway.app.state.renderer.etag(sha256(broken), spec)
    answer = client.post(
        "/render", files={"image": ("a.jpg", broken)}, data={"boxes": "x"}, headers={"If-None-Match": etag}
    )
    assert answer.status_code == 412, answer.text
    assert client.post("/render", files={"image": ("a.jpg", broken)}, data={"boxes": "x"}).status_code == 400


def test_memes_render_has_an_etag_too(client):
    request = {"template": TEMPLATE, "render": "png", "rank": 2}
    first = client.post("/memes", json=request)
    assert first.status_code == 200 and first.headers["etag"]
    again = client.post("/memes", json=request, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 412 and again.content == b""


def test_render_with_a_layout_on_an_upload(client):
    upload = jpeg(600, 600)
    drake = picture(
        client.post(
            "/render",
            files={"image": ("a.jpg", upload)},
            data={"boxes": ["no", "yes"], "layout": "drake hotline bling"},
        )
    )
    plain = picture(client.post("/render", files={"image": ("a.jpg", upload)}, data={"boxes": ["no", "yes"]}))
    blank = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"), np.int16)

    def drawn(image):
        return np.abs(np.asarray(image.convert("RGB"), np.int16) - blank).max(axis=2) > 60

    assert not drawn(drake)[:, :290].any() and drawn(drake)[:, 310:].any(), "Drake's right-hand panels"
    assert drawn(plain)[:, :290].any(), "the default layout spans the width"


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"json": {"boxes": ["x"]}}, 422, "send an image"),
        ({"json": {"template": TEMPLATE}}, 422, "boxes"),
        ({"json": {"template": TEMPLATE, "boxes": []}}, 422, "boxes"),
        ({"json": {"template": TEMPLATE, "boxes": ["x"] * 11}}, 422, "boxes"),
        ({"json": {"template": TEMPLATE, "boxes": ["x" * 501]}}, 422, "longer than 500"),
        ({"json": {"template": "No-Such-Meme", "boxes": ["x"]}}, 404, "no image for template"),
        ({"json": {"template": TEMPLATE, "boxes": ["x"], "format": "bmp"}}, 422, "format"),
        ({"files": {"image": ("notes.txt", b"hello, not an image")}, "data": {"boxes": "x"}}, 415, "not an image type"),
        ({"files": {"image": ("cut.jpg", jpeg()[:300])}, "data": {"boxes": "x"}}, 400, "JPEG data"),
    ],
)
def test_render_refuses_bad_input_clearly(client, kwargs, status, message):
    response = client.post("/render", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.text


def test_memes_render_on_a_template_without_an_image_is_404_before_generating(client, gateway, tmp_path):
    renderer = gateway.app.state.renderer
    saved = renderer.templates_dir
    renderer.templates_dir = tmp_path  # an empty folder: nothing to draw on
    renderer.rescan_templates()
    try:
        metrics = gateway.service.metrics

        def lookups():  # one per generation
            return metrics.cache_hits._value.get() + metrics.cache_misses._value.get()

        before = lookups()
        response = client.post("/memes", json={"template": TEMPLATE, "render": "png"})
        assert response.status_code == 404 and "no image for template" in response.text
        assert str(tmp_path) not in response.text, "server paths stay in the log"
        assert lookups() == before
        assert client.post("/memes", json={"template": TEMPLATE}).status_code == 200, "JSON needs no image"
    finally:
        renderer.templates_dir = saved
        renderer.rescan_templates()


def test_templates_list_their_images_and_thumbnails_are_jpeg(client):
    templates = client.get("/templates").json()["templates"]
    grumpy = next(t for t in templates if t["name"] == TEMPLATE)
    assert grumpy["image"] == f"/templates/{TEMPLATE}/image"
    thumbnail = client.get(grumpy["image"], params={"size": 64})
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert max(picture(thumbnail).size) == 64
    assert "max-age" in thumbnail.headers["cache-control"]
    again = client.get(grumpy["image"], params={"size": 64}, headers={"If-None-Match": thumbnail.headers["etag"]})
    assert again.status_code == 304
    assert client.get("/templates/Nope/image").status_code == 404
    assert client.get(grumpy["image"], params={"size": 5}).status_code == 422
    too_big = client.get(grumpy["image"], params={"size": 801})
    assert too_big.status_code == 422 and "800-pixel limit" in too_big.text


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in ("/static/app.js", "/static/style.css"):
        assert path in page.text
        assert client.get(path).status_code == 200


def test_a_shared_url_renders_what_the_post_renders_and_caches_for_good(client):
    listed = client.post("/memes", json={"template": TEMPLATE, "num_return_sequences": 3}).json()["memes"]
    for rank in (1, 3):
        url = listed[rank - 1]["url"]
        assert f"/images/templates/{TEMPLATE}/" in url and url.endswith(".png")
        shared = client.get(url)
        posted = client.post(
            "/memes", json={"template": TEMPLATE, "render": "png", "rank": rank, "num_return_sequences": 3}
        )
        assert shared.status_code == 200, shared.text
        assert shared.content == posted.content, "the same image as POST /memes with render"
        assert shared.headers["cache-control"] == "public, max-age=86400"  # then revalidated by ETag
        again = client.get(url, headers={"If-None-Match": shared.headers["etag"]})
        assert again.status_code == 304 and not again.content
    as_jpeg = client.get(listed[0]["url"].removesuffix(".png") + ".jpg")
    assert as_jpeg.headers["content-type"] == "image/jpeg" and picture(as_jpeg).format == "JPEG"


def test_an_upload_url_is_signed_renders_the_post_image_and_expires(gateway, client):
    upload = jpeg(colour=(20, 140, 60))
    fields = {"num_beams": "5", "num_return_sequences": "2"}
    listed = client.post("/memes", files={"image": ("a.jpg", upload)}, data=fields).json()["memes"]
    url = listed[1]["url"]
    assert "/images/uploads/" in url and "sig=" in url and "expires=" in url
    shared = client.get(url)
    posted = client.post("/memes", files={"image": ("a.jpg", upload)}, data={**fields, "render": "png", "rank": "2"})
    assert shared.status_code == 200, shared.text
    assert shared.content == posted.content
    assert (
        shared.headers["cache-control"].startswith("public, max-age=")
        and "immutable" in shared.headers["cache-control"]
    )
    as_webp = client.get(url.replace(".png?", ".webp?"))  # the format is free to change, as on templates
    assert as_webp.status_code == 200 and picture(as_webp).format == "WEBP"
    # Changed in any part, the URL is refused: the boxes, the signature, the layout, another upload.
    path, query = url.split("?", 1)
    head, _, last = path.rpartition("/")
    for tampered in (
        f"{head}/someone_else~ts_words.png?{query}",
        url.replace("sig=", "sig=A"),
        url + "&layout=Grumpy-Cat",
        url.replace("/images/uploads/", "/images/uploads/").replace(url.split("/")[5], "0" * 64),
    ):
        assert client.get(tampered).status_code == 403, tampered
    # Past its expiry, or once the upload is no longer kept: 410 Gone.
    links, store = gateway.app.state.sharing.links, gateway.app.state.sharing.store
    digest = url.split("/")[5]
    expired = links.path(digest, ("a", "b"), "png", None, 1_000_000_000)
    assert client.get(expired).status_code == 410
    never_kept = links.path("1" * 64, ("a", "b"), "png", None, 4_000_000_000)
    assert client.get(never_kept).status_code == 410
    assert store is not None


def server_sent_events(response) -> list[tuple[str, dict]]:
    events, kind = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def test_streamed_memes_come_as_they_finish_then_the_answer(client):
    request = {"template": TEMPLATE, "num_return_sequences": 4}
    with client.stream("POST", "/memes?stream=true", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = server_sent_events(response)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"meme"} and len(kinds) >= 5
    streamed = [data for _, data in events[:-1]]
    assert [m["index"] for m in streamed] == list(range(len(streamed))), "in the order they finished"
    answer = events[-1][1]
    assert answer == {**client.post("/memes", json=request).json(), "timings_ms": answer["timings_ms"]}
    assert all(m["boxes"] in [s["boxes"] for s in streamed] for m in answer["memes"])
    # Refused before any caption: the usual status and error, not a stream.
    unknown = client.post("/memes?stream=true", json={"template": "No-Such-Template"})
    assert unknown.status_code == 422 and "unknown template" in unknown.json()["detail"]
    both = client.post("/memes?stream=true", json={"template": TEMPLATE, "render": "png"})
    assert both.status_code == 422


def test_a_streamed_caption_is_sent_while_the_search_still_runs(gateway, client):
    """The first event reaches the client before the memes are done (not buffered to the end)."""
    service, release = gateway.service, threading.Event()
    real = service.memes

    async def held_back(image, template, options, on_caption=None):
        on_caption(["first", "caption"])
        while not release.is_set():  # the search goes on until the client has read the event
            await asyncio.sleep(0.01)
        return await real(image, template, options)

    service.memes = held_back
    try:
        with client.stream("POST", "/memes?stream=true", json={"template": TEMPLATE}) as response:
            lines = response.iter_lines()
            assert next(lines) == "event: meme"
            assert json.loads(next(lines).removeprefix("data: "))["boxes"] == ["first", "caption"]
            release.set()
            rest = list(lines)
        assert "event: result" in rest
    finally:
        release.set()
        service.memes = real
