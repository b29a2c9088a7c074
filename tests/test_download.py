"""`memefly data download` against a loopback HTTP server: checksums, resume, errors, offline."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from net import unreachable_url

from memefly import paths
from model_export.download import DownloadError, download_templates, manifest

FILES = {f"Template-{i}.jpg": bytes(range(256)) * (40 + i) for i in range(3)}


class FileServer:
    """Serves FILES over HTTP with Range support. `cut[name] = n` sends n bytes of the next
    reply for that file, then drops the connection; `ignore_range` answers 200 to Range."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                requested = self.headers.get("Range")
                server.requests.append((name, requested))
                if name not in server.files or self.path != f"/templates/{name}":
                    self.send_error(404)
                    return
                data, status, start = server.files[name], 200, 0
                if requested and not server.ignore_range:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = server.cut.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/templates/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer(FILES)
    yield s
    s.close()


@pytest.fixture
def records(tmp_path) -> Path:
    """A manifest of FILES, as template_images.json records the real images."""
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps(
            {"files": [{"file": n, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in FILES.items()]}
        )
    )
    return path


def fetch(folder, url, records, **kwargs):
    return download_templates(folder, url, progress=False, manifest_path=records, **kwargs)


def test_downloads_every_image_and_then_nothing(tmp_path, server, records):
    folder = tmp_path / "templates"
    report = fetch(folder, server.url, records)
    assert sorted(report.fetched) == sorted(Path(n).stem for n in FILES)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    again = fetch(folder, server.url, records)
    assert again.fetched == [] and len(again.present) == len(FILES)
    assert len(server.requests) == len(FILES)  # nothing was asked twice


def test_only_the_named_templates(tmp_path, server, records):
    report = fetch(tmp_path, server.url, records, names=["Template-1"])
    assert report.fetched == ["Template-1"] and [p.name for p in tmp_path.glob("*.jpg")] == ["Template-1.jpg"]
    with pytest.raises(DownloadError, match="no template image on record for Nope"):
        fetch(tmp_path, server.url, records, names=["Nope"])


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, server, records):
    name = "Template-2.jpg"
    server.cut[name] = 5000
    with pytest.raises(DownloadError, match="again to resume"):
        fetch(tmp_path, server.url, records)
    assert not (tmp_path / name).exists()  # never a partial file under the template's name
    assert (tmp_path / f".{name}.part").stat().st_size == 5000
    fetch(tmp_path, server.url, records)
    assert (name, "bytes=5000-") in server.requests
    assert (tmp_path / name).read_bytes() == FILES[name]
    assert not list(tmp_path.glob(".*.part"))


def test_a_server_without_range_support_restarts_the_file(tmp_path, server, records):
    name = "Template-0.jpg"
    server.cut[name] = 3000
    with pytest.raises(DownloadError):
        fetch(tmp_path, server.url, records)
    server.ignore_range = True
    fetch(tmp_path, server.url, records)
    assert (tmp_path / name).read_bytes() == FILES[name]


def test_a_file_that_does_not_match_its_checksum_is_refused(tmp_path, server, records):
    server.files["Template-1.jpg"] = b"x" * len(FILES["Template-1.jpg"])  # same size, other bytes
    with pytest.raises(DownloadError, match="does not match its checksum"):
        fetch(tmp_path, server.url, records)
    assert not (tmp_path / "Template-1.jpg").exists() and not (tmp_path / ".Template-1.jpg.part").exists()


def test_missing_on_the_server_names_the_url_setting(tmp_path, server, records):
    del server.files["Template-0.jpg"]
    with pytest.raises(DownloadError, match="HTTP 404.*MEMEFLY_TEMPLATES_URL"):
        fetch(tmp_path, server.url, records)


def test_a_complete_but_corrupt_part_file_is_fetched_again(tmp_path, server, records):
    name = "Template-1.jpg"
    (tmp_path / f".{name}.part").write_bytes(b"\0" * len(FILES[name]))  # e.g. a disk error
    fetch(tmp_path, server.url, records)
    assert (tmp_path / name).read_bytes() == FILES[name]
    assert (name, None) in server.requests  # from the start, not resumed


def test_offline_says_which_setting_to_point_where(tmp_path, records):
    with pytest.raises(DownloadError, match="MEMEFLY_TEMPLATES_DIR"):
        fetch(tmp_path / "t", unreachable_url(), records, timeout_s=5)
    assert not list((tmp_path / "t").glob("*.jpg"))


def test_cli_download(tmp_path, server, records, monkeypatch, capsys):
    from memefly.cli import main
    from model_export import download

    monkeypatch.setattr(download, "MANIFEST", records)
    assert main(["data", "download", "--to", str(tmp_path), "--url", server.url, "--quiet"]) == 0
    assert "3 downloaded" in capsys.readouterr().out
    assert main(["data", "download", "--to", str(tmp_path / "x"), "--url", server.url + "nothing/", "--quiet"]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_the_record_matches_the_dataset_copy_and_covers_the_default_model():
    images = paths.dataset_dir() / "dataset" / "templates" / "img"
    if not images.is_dir():
        pytest.skip(f"ImgFlip575K copy not found at {paths.dataset_dir()} (set MEMEFLY_DATASET_DIR)")
    recorded = manifest()
    assert {f.file for f in recorded} == {p.name for p in images.iterdir()}
    for entry in recorded:
        data = (images / entry.file).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.bytes, entry.sha256), entry.file
    default_templates = paths.decoder_run() / "templates.json"
    if default_templates.exists():
        manifest([t["name"] for t in json.loads(default_templates.read_text())])  # raises if one is missing
