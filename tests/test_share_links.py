"""Shared image URLs without a gateway: the path encoding, the signatures, the upload store."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.errors import Forbidden, Gone, InvalidRequest
from gateway.sharing.links import UploadLinks, decode_text, encode_text, parse_boxes, template_path
from gateway.sharing.uploads import LocalUploadStore


@given(st.text(max_size=60))
@example(" ")  # "_" alone is the empty box: one space must not encode to it (hypothesis found it)
@example("")
def test_any_text_survives_the_trip_through_a_path_segment(text):
    segment = encode_text(text)
    assert "/" not in segment and "?" not in segment and "#" not in segment
    assert decode_text(unquote(segment)) == text


def test_paths_read_like_memegen_and_parse_back():
    path = template_path("Grumpy Cat", ["when you_see it", "", "100% ok?"], "jpeg")
    assert path == "/images/templates/Grumpy_Cat/when_you~usee_it/_/100~p_ok~q.jpg"
    boxes, fmt = parse_boxes(unquote(path.split("/", 4)[4]))
    assert (boxes, fmt) == (("when you_see it", "", "100% ok?"), "jpeg")
    with pytest.raises(InvalidRequest):
        parse_boxes("top/bottom.gif")
    with pytest.raises(InvalidRequest):
        decode_text("~z")
    with pytest.raises(InvalidRequest, match="at most 10"):
        parse_boxes("/".join("x" * 11) + ".png")
    with pytest.raises(InvalidRequest, match="longer than 500"):
        parse_boxes("x" * 501 + ".png")


def test_an_upload_url_lives_at_least_its_ttl_rounded_up_to_the_hour():
    from gateway.sharing.links import url_expiry

    assert url_expiry(7_200.0, 600) == 7_800  # a TTL under the hour is the step: 7,800 is a multiple of 600
    assert url_expiry(7_201.5, 86_400) == 97_200  # 93,601.5 rounded up to the hour
    assert url_expiry(10_800.0, 86_400) == 97_200  # already on the hour: unchanged
    for now in (1_000.0, 1_001.0, 3_599.0):
        assert url_expiry(now, 86_400) == 90_000  # within the hour, one expiry: one URL per meme


def test_an_upload_url_checks_every_part_and_its_expiry():
    links = UploadLinks(b"k" * 32)
    later = int(time.time()) + 60
    path = links.path("a" * 64, ("top", "bottom"), "png", "Drake", later)
    sig = path.rsplit("sig=", 1)[1]
    assert path.startswith(f"/images/uploads/{'a' * 64}/top/bottom.png?layout=Drake&expires={later}&sig=")
    assert links.check("a" * 64, ("top", "bottom"), "Drake", str(later), sig) == later
    for changed in (
        ("b" * 64, ("top", "bottom"), "Drake", str(later)),
        ("a" * 64, ("top", "bottom!"), "Drake", str(later)),
        ("a" * 64, ("top",), "Drake", str(later)),
        ("a" * 64, ("top", "bottom"), None, str(later)),
        ("a" * 64, ("top", "bottom"), "Drake", str(later + 1)),
        ("a" * 64, ("top", "bottom"), "Drake", "soon"),
    ):
        with pytest.raises(Forbidden):
            links.check(*changed, sig)
    for forged in (sig[:-1] + ("A" if sig[-1] != "A" else "B"), "é" * len(sig), ""):
        with pytest.raises(Forbidden):
            links.check("a" * 64, ("top", "bottom"), "Drake", str(later), forged)
    with pytest.raises(Forbidden):
        UploadLinks(b"x" * 32).check("a" * 64, ("top", "bottom"), "Drake", str(later), sig)
    past = int(time.time()) - 1
    old = links.path("a" * 64, ("top",), "png", None, past).rsplit("sig=", 1)[1]
    with pytest.raises(Gone):
        links.check("a" * 64, ("top",), None, str(past), old)


def test_the_local_store_keeps_uploads_until_their_last_url_expires_and_within_its_size(tmp_path):
    store = LocalUploadStore(tmp_path, max_bytes=2500)
    now = int(time.time())

    async def scenario():
        await store.put("a" * 64, b"a" * 1000, now + 100)
        await store.put("a" * 64, b"a" * 1000, now + 50)  # an earlier URL does not shorten its life
        assert os.stat(store._path("a" * 64)).st_mtime == now + 100
        await store.put("b" * 64, b"b" * 1000, now + 200)
        assert await store.get("a" * 64) == b"a" * 1000
        os.utime(store._path("b" * 64), (now, now - 1))  # b's URLs have expired
        assert await store.get("b" * 64) is None
        await store.put("c" * 64, b"c" * 1000, now + 300)
        await store.put("d" * 64, b"d" * 1000, now + 400)
        store._sweep()
        return [await store.get(x * 64) for x in "abcd"]

    a, b, c, d = asyncio.run(scenario())
    assert b is None and not store._path("b" * 64).exists(), "expired: deleted"
    assert a is None, "over the size bound: the soonest to expire went first"
    assert c == b"c" * 1000 and d == b"d" * 1000


def test_the_s3_store_keeps_uploads_until_their_last_url_expires(monkeypatch):
    from moto import mock_aws

    from gateway.sharing.uploads import make_store

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="memes")
        store = make_store("s3://memes/uploads", Path("unused"), 0)
        now = int(time.time())

        async def scenario():
            await store.put("a" * 64, b"upload", now + 100)
            await store.put("a" * 64, b"upload", now + 50)
            kept = await store.get("a" * 64)
            await store.put("b" * 64, b"old", now - 1)  # its URL has expired
            return kept, await store.get("b" * 64), await store.get("c" * 64)

        kept, expired, missing = asyncio.run(scenario())
        assert kept == b"upload" and expired is None and missing is None
        head = boto3.client("s3").head_object(Bucket="memes", Key="uploads/" + "a" * 64)
        assert head["Metadata"]["expires"] == str(now + 100)
