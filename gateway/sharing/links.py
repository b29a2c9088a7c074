"""Shareable image URLs for memes, memegen style: the boxes are path segments, the extension
picks the format.

    /images/templates/Drake_Hotline_Bling/homework/memes.png
    /images/uploads/<sha256>/top_text/bottom_text.jpg?layout=...&expires=...&sig=...

A template URL is open, as memegen's are: anyone may write one (POST /render draws any text
on a template too). An upload URL is a capability: it names the upload by its SHA-256 and
carries an HMAC of what it draws (image, boxes, layout, expiry), so it cannot be changed into
another meme, or turned onto someone else's upload, without the secret; the extension (the
format) and `?size=` are free to change, as on a template URL.

Text in a segment: "_" is a space, and "~" escapes what a path cannot hold or would read
otherwise (~u "_", ~t "~", ~s "/", ~b "\\", ~q "?", ~h "#", ~p "%", ~a "&", ~n a new line);
an empty box is a lone "_" (so a box of one space is "%20"). Anything else is percent-encoded as usual.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from gateway.api.schemas import MAX_BOX_CHARS, MAX_BOXES
from gateway.errors import Forbidden, Gone, InvalidRequest

FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}  # extension -> render format
_ESCAPES = {"~": "~t", "_": "~u", " ": "_", "?": "~q", "&": "~a", "%": "~p", "#": "~h", "/": "~s", "\\": "~b"}
_ESCAPES["\n"] = "~n"
_UNESCAPES = {code[1]: char for char, code in _ESCAPES.items() if code.startswith("~")}
_SAFE = "~_-.!*'(),:;@=+$"
UPLOAD_ID = re.compile(r"[0-9a-f]{64}")


def encode_text(text: str) -> str:
    if not text:
        return "_"
    if text == " ":  # "_" alone is the empty box; a lone space goes percent-encoded instead
        return "%20"
    return quote("".join(_ESCAPES.get(char, char) for char in text), safe=_SAFE)


def decode_text(segment: str) -> str:
    """The inverse of encode_text, on a segment already percent-decoded (as the router gives it)."""
    if segment == "_":
        return ""
    out, i = [], 0
    while i < len(segment):
        char = segment[i]
        if char == "~":
            code = segment[i + 1 : i + 2]
            if code not in _UNESCAPES:
                raise InvalidRequest(f"{segment!r}: '~{code}' is no escape (~u ~t ~s ~b ~q ~h ~p ~a ~n)")
            out.append(_UNESCAPES[code])
            i += 2
            continue
        out.append(" " if char == "_" else char)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class MemePath:
    """What an image URL's path asks for."""

    source: str  # a template name, or an upload's SHA-256
    boxes: tuple[str, ...]
    format: str  # png | jpeg | webp


def parse_boxes(rest: str) -> tuple[tuple[str, ...], str]:
    """ "top/bottom.png" -> (("top", "bottom"), "png"), within POST /render's limits."""
    head, dot, extension = rest.rpartition(".")
    if not dot or extension.lower() not in FORMATS:
        raise InvalidRequest(f"an image URL ends with .png, .jpg or .webp, not {rest.rsplit('/', 1)[-1]!r}")
    segments = head.split("/")
    if len(segments) > MAX_BOXES:
        raise InvalidRequest(f"{len(segments)} boxes: at most {MAX_BOXES}")
    boxes = tuple(decode_text(segment) for segment in segments)
    if any(len(box) > MAX_BOX_CHARS for box in boxes):
        raise InvalidRequest(f"a box is longer than {MAX_BOX_CHARS} characters")
    return boxes, FORMATS[extension.lower()]


EXPIRY_STEP_S = 3600


def url_expiry(now: float, ttl_s: int) -> int:
    """At least TTL_S from NOW, rounded up to the hour (to TTL_S when that is shorter): the same
    meme of the same upload gets the same URL all that while, so browsers and CDNs hit their caches."""
    step = min(EXPIRY_STEP_S, ttl_s)
    return -(-int(now + ttl_s) // step) * step


def _extension(render_format: str) -> str:
    return "jpg" if render_format == "jpeg" else render_format


def template_path(template: str, boxes: Iterable[str], render_format: str = "png") -> str:
    segments = "/".join(encode_text(box) for box in boxes)
    return f"/images/templates/{encode_text(template)}/{segments}.{_extension(render_format)}"


class UploadLinks:
    """Signs and checks upload URLs with a secret (MEMEFLY_URL_SECRET)."""

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the URL secret must be at least 16 bytes")
        self._secret = secret

    def path(self, upload_id: str, boxes: Sequence[str], render_format: str, layout: str | None, expires: int) -> str:
        segments = "/".join(encode_text(box) for box in boxes)
        query = {"layout": layout} if layout else {}
        query.update(expires=str(expires), sig=self._signature(upload_id, tuple(boxes), layout, expires))
        return f"/images/uploads/{upload_id}/{segments}.{_extension(render_format)}?{urlencode(query)}"

    def check(self, upload_id: str, boxes: tuple[str, ...], layout: str | None, expires: str, sig: str) -> int:
        """The URL's expiry (Unix seconds); Forbidden when the signature does not match what it
        asks for, Gone when it has expired."""
        try:
            when = int(expires)
        except ValueError:
            raise Forbidden("this image URL is not one the gateway made (bad expiry)") from None
        expected = self._signature(upload_id, boxes, layout, when)
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogatepass")):
            raise Forbidden("this image URL is not one the gateway made, or it was changed")
        if when < time.time():
            raise Gone("this image URL has expired, and its upload with it: generate the memes again")
        return when

    def _signature(self, upload_id: str, boxes: Sequence[str], layout: str | None, expires: int) -> str:
        message = json.dumps([upload_id, list(boxes), layout or "", expires], ensure_ascii=False)
        digest = hmac.new(self._secret, message.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode("ascii")
