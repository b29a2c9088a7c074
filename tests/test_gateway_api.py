"""The HTTP API, over real HTTP, on both backends: in-process SavedModels and gRPC to a loopback TF Serving."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re

import httpx
import numpy as np
import pytest
from gateway_harness import gateway_settings, running_gateway
from PIL import Image

from memefly import contract as c

TEMPLATES = ["Drake-Hotline-Bling", "Grumpy-Cat", "Mocking-Spongebob", "Sparta-Leonidas"]


@pytest.fixture(scope="module", params=["inprocess", "grpc"])
def gateway(request, served_models_dir, loopback):
    target = loopback.target if request.param == "grpc" else None
    with running_gateway(gateway_settings(served_models_dir, request.param, target)) as running:
        running.loopback = loopback if request.param == "grpc" else None
        yield running


@pytest.fixture
def client(gateway):
    if gateway.loopback:
        gateway.loopback.reset()
    with gateway.client() as client:
        yield client


@pytest.fixture(scope="module")
def template_jpeg(tiny_dataset) -> bytes:
    return (tiny_dataset / "dataset" / "templates" / "img" / "Grumpy-Cat.jpg").read_bytes()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client, data: bytes, name="meme.jpg", **fields):
    return client.post(
        "/memes", files={"image": (name, data, "application/octet-stream")}, data={k: str(v) for k, v in fields.items()}
    )


def test_health_and_readiness(client, gateway):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["model"]["version"] == "1"
    assert body["model"]["backend"] == gateway.service.backend.name


def test_templates_lists_the_models_templates(client):
    templates = client.get("/templates").json()["templates"]
    assert [t["name"] for t in templates] == TEMPLATES
    assert [t["id"] for t in templates] == [0, 1, 2, 3]
    assert all(t["box_count"] >= 1 for t in templates)


def test_memes_for_an_uploaded_image(client, template_jpeg):
    response = upload(client, template_jpeg)
    assert response.status_code == 200, response.text
    body = response.json()
    memes = body["memes"]
    assert [m["rank"] for m in memes] == [1, 2, 3, 4, 5]
    scores = [m["score"] for m in memes]
    assert scores == sorted(scores, reverse=True)
    assert len({m["text"] for m in memes}) == 5
    for meme in memes:
        assert meme["boxes"] and meme["text"] == c.BOX_SEPARATOR.join(meme["boxes"])
        assert not re.search(r"<(unk|pad|start|end|sep)>", meme["text"])
    assert body["image_sha256"] == hashlib.sha256(template_jpeg).hexdigest()
    assert len(body["templates"]) == 3
    assert body["template"] == {**body["templates"][0], "known": True}
    assert {t["name"] for t in body["templates"]} <= set(TEMPLATES)
    probabilities = [t["probability"] for t in body["templates"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    assert set(body["timings_ms"]) == {"encode", "decode", "total"}
    assert body["model"]["template_fingerprint"]


def test_default_memes_are_distinct_fit_the_template_and_are_not_training_captions(client, gateway, tiny_run):
    """The default strategy through the served path: five memes, no two near-duplicates, no box
    twice, box counts the template's real memes use, no training caption, the same for the same input."""
    import json

    from memefly.decoding.distinct import CaptionSet, caption_words, near_duplicate

    templates = {t["name"]: t for t in json.loads((tiny_run / "templates.json").read_text())}
    training = CaptionSet(np.load(tiny_run / "training_captions.npy"))
    for name in TEMPLATES:
        memes = client.post("/memes", json={"template": name}).json()["memes"]
        assert len(memes) == 5
        keys = [caption_words(m["boxes"]) for m in memes]
        assert not any(near_duplicate(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]), name
        for meme, key in zip(memes, keys, strict=True):
            assert len(set(key)) == len(key), meme  # no box twice
            assert len(key) in templates[name]["box_counts"], (name, meme)
            assert meme["boxes"] not in training
        again = client.post("/memes", json={"template": name}).json()["memes"]
        assert again == memes  # seeded by the input: the same template, the same memes
    drake = client.post("/memes", json={"template": "Drake-Hotline-Bling", "num_beams": 5}).json()["memes"]
    assert all(len(caption_words(m["boxes"])) == 2 for m in drake)  # its layout has two panels


def test_a_phone_screenshot_of_a_template_is_recognised(client, template_jpeg):
    from PIL import ImageDraw

    inner = Image.open(io.BytesIO(template_jpeg)).convert("RGB")
    shot = Image.new("RGB", (inner.width + 80, inner.height * 3), (255, 255, 255))
    draw = ImageDraw.Draw(shot)
    for y in range(15, shot.height - 15, 30):
        if not inner.height - 20 < y < 2 * inner.height + 20:
            draw.text((20, y), "someone posted this and the replies say", fill=(20, 20, 20))
    shot.paste(inner, (40, inner.height))
    body = upload(client, png(shot), "screenshot.png").json()
    assert body["template"]["name"] == "Grumpy-Cat", body["templates"]


def test_photos_that_are_no_template_are_said_so_and_each_get_memes_of_their_own(client):
    import skimage.data  # scikit-image's sample photos: a cat, an astronaut, a cup of coffee...

    answers = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field"):
        response = upload(client, png(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")), f"{name}.png")
        assert response.status_code == 200, response.text
        answers.append(response.json())
    # The tiny export knows four templates, so a photo can look like one of them; most do not.
    assert [a["template"]["known"] for a in answers].count(False) >= 3, [a["template"] for a in answers]
    for answer in answers:  # still answered: memes in the style of the likeliest templates
        assert len(answer["memes"]) == 5 and answer["template"]["name"] == answer["templates"][0]["name"]
    assert len({a["memes"][0]["text"] for a in answers}) == 5, "each photo its own memes"


def without_url_query(memes: list[dict]) -> list[dict]:
    """The memes with their URLs' queries cut: an upload URL's expiry (and so its signature) is the clock's."""
    return [{**meme, "url": meme["url"].split("?", 1)[0]} for meme in memes]


def test_json_base64_gives_the_same_memes_as_multipart(client, template_jpeg):
    options = {"num_beams": 4, "num_return_sequences": 3, "max_length": 12}
    multipart = upload(client, template_jpeg, **options).json()
    encoded = base64.b64encode(template_jpeg).decode()
    as_json = client.post("/memes", json={"image_base64": encoded, **options}).json()
    data_url = client.post("/memes", json={"image_base64": "data:image/jpeg;base64," + encoded, **options}).json()
    # The same memes; their upload URLs differ at most in the expiry, which the clock decides.
    assert (
        without_url_query(as_json["memes"])
        == without_url_query(multipart["memes"])
        == without_url_query(data_url["memes"])
    )
    assert len(as_json["memes"]) == 3


def test_a_template_name_needs_no_encoder(client, gateway):
    response = client.post("/memes", json={"template": "sparta leonidas", "num_beams": 3, "num_return_sequences": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["templates"][0] == {"name": "Sparta-Leonidas", "probability": 1.0}
    assert body["template"] == {"name": "Sparta-Leonidas", "probability": 1.0, "known": True}
    assert body["image_sha256"] is None and len(body["memes"]) == 2
    if gateway.loopback:
        work = [call for call in gateway.loopback.calls if call.signature != c.METADATA_SIGNATURE]  # not health checks
        assert work and {(call.model, call.signature) for call in work} <= {
            (c.DECODER_MODEL, c.INIT_SIGNATURE),
            (c.DECODER_MODEL, c.STEP_SIGNATURE),
        }


def test_repeated_images_come_from_the_cache(client, gateway):
    image = png(Image.new("RGB", (120, 90), (10, 200, 30)))
    hits = gateway.service.cache.hits
    first = upload(client, image, name="a.png").json()
    second = upload(client, image, name="b.png").json()
    assert gateway.service.cache.hits == hits + 1
    assert first["templates"] == second["templates"] and without_url_query(first["memes"]) == without_url_query(
        second["memes"]
    )
    if gateway.loopback:
        encodes = [
            call
            for call in gateway.loopback.calls
            if (call.model, call.signature) == (c.ENCODER_MODEL, c.ENCODER_BYTES_SIGNATURE)
        ]
        assert len(encodes) == 1
    assert re.search(r"memefly_template_cache_hits_total [1-9]", client.get("/metrics").text)


def test_exclude_returns_other_captions(client):
    first = client.post("/memes", json={"template": "Grumpy-Cat"}).json()["memes"]
    seen = [m["text"] for m in first]
    again = client.post("/memes", json={"template": "Grumpy-Cat", "exclude": seen}).json()["memes"]
    assert len(again) == 5
    assert not {m["text"] for m in again} & set(seen)


def test_sampling_is_reproducible_with_a_seed(client):
    ask = {"template": "Mocking-Spongebob", "do_sample": True, "num_return_sequences": 4, "seed": 7, "top_p": 0.9}
    one = client.post("/memes", json=ask).json()["memes"]
    two = client.post("/memes", json=ask).json()["memes"]
    assert one == two and len(one) >= 1
    other = client.post("/memes", json={**ask, "seed": 8}).json()["memes"]
    assert [m["text"] for m in one] != [m["text"] for m in other]


def words_of(memes) -> set[str]:
    return {w for m in memes for w in re.findall(r"[a-z']+", m["text"])}


def test_diverse_beam_search_and_blocked_words(client):
    ask = {"template": "Drake-Hotline-Bling", "num_beams": 4, "num_return_sequences": 4}
    diverse_ask = {**ask, "num_beam_groups": 4, "diversity_penalty": 5.0}
    plain = client.post("/memes", json=ask).json()["memes"]
    diverse = client.post("/memes", json=diverse_ask).json()["memes"]
    assert len({m["text"] for m in diverse}) == 4
    first_words = lambda memes: {m["text"].split()[0] for m in memes if m["text"].split()}  # noqa: E731
    assert len(first_words(diverse)) >= len(first_words(plain))
    blocked = sorted(words_of(diverse))[:3]  # words this very request would otherwise use
    response = client.post("/memes", json={**diverse_ask, "blocked_words": blocked})
    assert response.status_code == 200, response.text
    assert not words_of(response.json()["memes"]) & set(blocked)


def test_safe_mode_never_uses_the_offensive_list(client, gateway):
    """The wiring of safe=true: whatever the offensive-word list holds is never generated."""
    service = gateway.service
    ask = {"template": "Grumpy-Cat", "num_beams": 3, "num_return_sequences": 3}
    unsafe = client.post("/memes", json={**ask, "safe": False}).json()["memes"]
    top_word = next(w for w in re.findall(r"[a-z']+", unsafe[0]["text"]) if w in service.vocabulary)
    saved = service.captioner.offensive_ids
    service.captioner.offensive_ids = {service.vocabulary.index(top_word)}  # as if the list flagged it
    try:
        safe = client.post("/memes", json=ask).json()["memes"]
        again_unsafe = client.post("/memes", json={**ask, "safe": False}).json()["memes"]
    finally:
        service.captioner.offensive_ids = saved
    assert top_word not in words_of(safe)
    assert again_unsafe == unsafe  # safe=false ignores the list


def test_offensive_list_flags_words_not_their_innocent_neighbours():
    from memefly.decoding.safety import offensive_token_ids

    vocabulary = ["<pad>", "<start>", "<end>", "<unk>", "<sep>", "fuck", "class", "shit", "assassin", "cat", "bitch"]
    flagged = {vocabulary[i] for i in offensive_token_ids(vocabulary)}
    assert {"fuck", "shit", "bitch"} <= flagged
    assert not flagged & {"class", "assassin", "cat", "<unk>"}


def test_batch_answers_each_image(client, template_jpeg):
    files = [
        ("images", ("a.jpg", template_jpeg, "image/jpeg")),
        ("images", ("b.txt", b"not an image", "text/plain")),
        ("images", ("c.png", png(Image.new("RGB", (50, 50), "red")), "image/png")),
    ]
    response = client.post("/memes/batch", files=files, data={"num_beams": "2", "num_return_sequences": "2"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert len(results[0]["result"]["memes"]) == 2 and results[0]["error"] is None
    assert results[1]["error"]["status"] == 415 and results[1]["result"] is None
    assert len(results[2]["result"]["memes"]) == 2
    as_json = client.post(
        "/memes/batch",
        json={
            "images_base64": [base64.b64encode(template_jpeg).decode(), "@@@"],
            "num_beams": 2,
            "num_return_sequences": 2,
        },
    ).json()["results"]
    assert without_url_query(as_json[0]["result"]["memes"]) == without_url_query(results[0]["result"]["memes"])
    assert as_json[1]["error"]["status"] == 400


def test_concurrent_requests_share_decoder_calls(gateway):
    service = gateway.service
    calls_before = service.scheduler.calls

    async def burst():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/memes",
                        json={
                            "template": t,
                            "num_beams": 3,
                            "num_return_sequences": 3,
                            "max_length": 10,
                            "min_length": 10,
                        },
                    )
                    for t in TEMPLATES * 2
                )
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    # 8 requests x (10 tokens + <end>) steps alone would be >= 88 calls; shared, far fewer.
    assert service.scheduler.calls - calls_before < 8 * 11
    text = httpx.get(gateway.url + "/metrics").text
    count = float(re.search(r"memefly_decoder_batch_rows_count (\S+)", text).group(1))
    total = float(re.search(r"memefly_decoder_batch_rows_sum (\S+)", text).group(1))
    assert total / count > 3  # on average more than one request's beams per call


@pytest.mark.parametrize(
    "make, status, fragment",
    [
        (lambda: b"", 400, "empty"),
        (lambda: b"hello, I am text", 415, "JPEG, PNG"),
        (lambda: png(Image.new("RGB", (40, 40)))[:60], 400, "truncated or corrupt"),
        (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 100, 400, "cannot be read"),
        (lambda: png(Image.new("1", (6000, 4000))), 413, "pixels"),
        (lambda: b"\xff\xd8\xff" + b"\x00" * (3 * 1024 * 1024), 413, "limit"),
    ],
    ids=["empty", "text", "truncated-png", "garbage-jpeg", "too-many-pixels", "too-many-bytes"],
)
def test_bad_uploads_get_clear_errors(client, make, status, fragment):
    response = upload(client, make())
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    assert not re.search(r"0x[0-9a-f]{6,}|BytesIO", response.json()["detail"]), "no Python internals"


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees
    return exif


@pytest.mark.parametrize(
    "data",
    [
        encoded(Image.new("RGB", (80, 40), (200, 30, 30)), "JPEG", exif=rotated_exif()),
        encoded(Image.new("RGB", (80, 40), (200, 30, 30)), "WEBP"),
        encoded(Image.new("1", (80, 40), 1), "BMP"),  # 1-bit: TensorFlow's BMP decoder cannot read it
        encoded(Image.new("P", (80, 40), 3), "BMP"),
        encoded(Image.new("RGB", (80, 40), (200, 30, 30)), "GIF"),
        encoded(Image.new("CMYK", (80, 40), (0, 200, 30, 0)), "JPEG"),
        encoded(Image.new("I;16", (80, 40), 3000), "PNG"),
    ],
    ids=["exif-rotated-jpeg", "webp", "1-bit-bmp", "palette-bmp", "gif", "cmyk-jpeg", "16-bit-png"],
)
def test_every_accepted_kind_of_image_gets_memes(client, data):
    response = upload(client, data)
    assert response.status_code == 200, response.text
    assert len(response.json()["memes"]) == 5


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"template": "Grumpy-Cat", "num_beams": 100}, 422, "less than or equal"),
        ({"template": "Grumpy-Cat", "num_beams": 2, "num_return_sequences": 3}, 422, "num_return_sequences"),
        ({"template": "Grumpy-Cat", "temperature": 0}, 422, "greater than"),
        ({"template": "Grumpy-Cat", "colour": "blue"}, 422, "Extra inputs"),
        ({"template": "No-Such-Meme"}, 422, "unknown template"),
        ({}, 422, "send an image"),
        ({"image_base64": "not base64!"}, 400, "not valid base64"),
    ],
)
def test_bad_parameters_are_422_with_the_reason(client, body, status, fragment):
    response = client.post("/memes", json=body)
    assert response.status_code == status, response.text
    assert fragment in str(response.json()["detail"])


def test_bad_bodies(client):
    assert client.post("/memes", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/memes", content=b"[1]", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/memes", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/memes", data={"image": "a string, not a file"}).status_code == 400
    huge = client.post("/memes", content=b"x" * (4 * 1024 * 1024), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert client.post("/memes/batch", json={"images_base64": ["AAAA"] * 5}).status_code == 422
    for body in (b"[" * 5000, b'{"a":' * 5000, b'{"seed": ' + b"9" * 5000 + b"}"):  # too deep, too long a number
        response = client.post("/memes", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_hostile_json_is_refused_before_parsing_and_never_stalls_the_server(gateway, client):
    """Nested empty lists up to the body limit (13 MB with the default settings): once that froze
    every request, /healthz too, for 4 s."""
    import threading
    import time

    limit = gateway.app.state.settings.max_upload_bytes * 4 // 3  # what the body-size cap lets through
    nested = b'{"template": "Grumpy-Cat", "exclude": [' + b"[]," * (limit // 3) + b"[]]}"
    with_image_key = b'{"image_base64": "", "exclude": [' + b"[]," * (limit // 3) + b"[]]}"
    answers, health = {}, []

    def send(name, body):
        with gateway.client() as own:
            answers[name] = own.post("/memes", content=body, headers={"content-type": "application/json"})

    senders = [threading.Thread(target=send, args=item) for item in (("small", nested), ("image", with_image_key))]
    for thread in senders:
        thread.start()
    while any(thread.is_alive() for thread in senders):
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        health.append(time.perf_counter() - started)
    for thread in senders:
        thread.join()
    assert answers["small"].status_code == 413 and "512 KB" in answers["small"].json()["detail"]
    assert answers["image"].status_code == 400 and "arrays and objects" in answers["image"].json()["detail"]
    assert max(health, default=0) < 1.0  # a generous bound: the point is no multi-second stall


def test_metrics_are_prometheus_text(client):
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'memefly_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "memefly_request_seconds_bucket" in text
    assert "memefly_decoder_searches" in text and "memefly_ready 1.0" in text


def test_a_client_that_leaves_mid_upload_is_499_in_one_info_line(gateway, caplog):
    """Not a server error: no 500 in /metrics (alerts), no traceback in the log (floods)."""
    import logging
    import socket
    import time

    port = int(gateway.url.rsplit(":", 1)[1])
    part = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n\xff\xd8\xff' + b"a" * 5000
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /memes HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                b"Content-Length: 1000000\r\n\r\n" + part
            )
            time.sleep(0.3)  # the gateway is reading the body when the client goes
        deadline = time.monotonic() + 10
        with gateway.client() as client:
            while time.monotonic() < deadline:
                text = client.get("/metrics").text
                if 'route="/memes",status="499"' in text:
                    break
                time.sleep(0.05)
    assert 'route="/memes",status="499"' in text
    assert 'route="/memes",status="500"' not in text
    gone = [r for r in caplog.records if "client went away" in r.getMessage()]
    assert gone and all(r.levelno == logging.INFO and not r.exc_info for r in gone)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_openapi_schema_lets_docs_call_every_route_within_the_servers_limits(client):
    spec = client.get("/openapi.json").json()
    for path, files in (("/memes", "image"), ("/memes/batch", "images"), ("/render", "image")):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(content), path
        assert files in content["multipart/form-data"]["schema"]["properties"], path
    size = next(p for p in spec["paths"]["/templates/{name}/image"]["get"]["parameters"] if p["name"] == "size")
    assert size["schema"]["anyOf"][0]["maximum"] == 8192
