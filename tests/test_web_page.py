"""The web page at /, end to end in headless Chromium (Playwright driving the system browser):
upload, five rendered memes, five more, a template from the list, an error, a phone screen."""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

MEMES_SHOWN = """n => {
  const images = [...document.querySelectorAll('#memes figure img')];
  return images.length === n && images.every(i => i.complete && i.naturalWidth > 0)
    && document.getElementById('spinner').hidden;
}"""

# The memes as the page holds them: bytes (base64), and the caption under each.
READ_MEMES = """async () => Promise.all([...document.querySelectorAll('#memes figure')].map(async figure => {
  const blob = await (await fetch(figure.querySelector('img').src)).blob();
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return {type: blob.type, data: btoa(binary), caption: figure.querySelector('figcaption span').textContent,
          download: figure.querySelector('a').getAttribute('download')};
}))"""


def chromium() -> str:
    """The system Chromium (Debian `chromium`, which .ci/run installs). CI sets
    MEMEFLY_REQUIRE_BROWSER=1 so that a missing browser fails there instead of skipping."""
    path = os.environ.get("MEMEFLY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MEMEFLY_REQUIRE_BROWSER") == "1":
            pytest.fail("MEMEFLY_REQUIRE_BROWSER=1 but no Chromium: apt-get install chromium chromium-driver")
        pytest.skip("no Chromium on this machine (apt-get install chromium chromium-driver; .ci/run does)")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # The page works under its Content-Security-Policy: no blocked script, style or image.
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    response = page.goto(site.url + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def photo(path, size=(480, 360)) -> str:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC).save(path, format="JPEG")
    return str(path)


def read_memes(page) -> list[dict]:
    return page.evaluate(READ_MEMES)


def test_upload_shows_five_rendered_memes_then_five_more(page, tmp_path):
    page.set_input_files("#file", photo(tmp_path / "holiday.jpg"))
    page.wait_for_function(MEMES_SHOWN, arg=5, timeout=120_000)
    # A holiday photo is no template: the page says so, and still shows memes.
    assert page.inner_text("#guess").startswith("Not a known template — here are memes in the style of ")
    assert page.is_hidden("#error")

    memes = read_memes(page)
    assert len(memes) == 5
    for meme in memes:
        image = Image.open(io.BytesIO(base64.b64decode(meme["data"])))
        assert (meme["type"], image.format, image.size) == ("image/png", "PNG", (480, 360)), "drawn on the upload"
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        assert (pixels.min(axis=2) > 235).sum() > 100, "with white meme text on it"
        assert meme["caption"].strip() and meme["download"].endswith(".png")
    screenshot = tmp_path / "five-memes.png"
    page.screenshot(path=screenshot, full_page=True)
    assert Image.open(screenshot).size[0] == 1280
    print(f"screenshot: {screenshot}")

    first = {meme["caption"] for meme in memes}
    with page.expect_response(lambda response: response.url.endswith("/memes")) as answer:
        page.click("#regenerate")
    assert answer.value.ok
    page.wait_for_function(
        "first => ![...document.querySelectorAll('#memes figcaption span')].some(s => first.includes(s.textContent))",
        arg=sorted(first),
        timeout=120_000,
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#memes figure img').length > 0 && document.getElementById('spinner').hidden"
    )
    again = {meme["caption"] for meme in read_memes(page)}
    assert again and not again & first, "five more are new captions"


def test_an_upload_of_a_known_template_is_named(page, tiny_dataset):
    page.set_input_files("#file", str(tiny_dataset / "dataset" / "templates" / "img" / "Grumpy-Cat.jpg"))
    page.wait_for_function(MEMES_SHOWN, arg=5, timeout=120_000)
    assert page.inner_text("#guess").startswith("Looks like Grumpy Cat (")


def test_a_template_from_the_list(page):
    page.click("#picker summary")
    buttons = page.locator("#templates button")
    buttons.first.wait_for()
    assert buttons.count() == 4 and page.locator("#templates button img").count() == 4, "thumbnails"
    page.fill("#filter", "grumpy")
    assert page.locator("#templates button:visible").count() == 1
    page.click("#templates button:visible")
    page.wait_for_function(MEMES_SHOWN, arg=5, timeout=120_000)
    assert page.is_hidden("#guess"), "no guessing for a template the user chose"
    assert "Grumpy Cat" in page.inner_text("#drop")


def test_a_file_that_is_not_an_image_gets_a_readable_message(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not pixels")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    message = page.inner_text("#error")
    assert message.startswith("That file is not an image we can read (415)")
    assert "JPEG, PNG" in message
    assert page.locator("#memes figure").count() == 0
    assert page.is_hidden("#spinner") and page.is_enabled("#generate"), "ready to try again"


def test_phone_width(browser, site, tmp_path):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    page.goto(site.url + "/")
    page.set_input_files("#file", photo(tmp_path / "phone.jpg", (300, 400)))
    page.wait_for_function(MEMES_SHOWN, arg=5, timeout=120_000)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "nothing wider than the screen"
    card = page.locator("#memes figure").first.bounding_box()
    assert card["width"] > 300, "one meme per row, full width"
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    context.close()


def test_api_docs_work_with_no_network(browser, site):
    """/docs loads Swagger UI from the gateway itself: every request the page makes stays on it."""
    context = browser.new_context()
    page = context.new_page()
    elsewhere = []
    page.on("request", lambda request: elsewhere.append(request.url) if not request.url.startswith(site.url) else None)
    page.goto(site.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
    context.close()
    assert {"/memes", "/memes/batch", "/render"} <= {p.strip().replace("\u200b", "") for p in paths}
    assert not elsewhere, elsewhere
