"""Readers: the ImgFlip575K layout and plain CSV/JSONL; bad records are skipped and counted."""

import json

import pytest
from conftest import shared_dataset_or_skip

from model_export.datasets import DataSourceError, content_id, read_imgflip575k, read_plain, read_source


def _layout(root, memes: dict, templates=(), images=()):
    (root / "dataset" / "memes").mkdir(parents=True)
    (root / "dataset" / "templates" / "img").mkdir(parents=True)
    for name, content in memes.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (root / "dataset" / "memes" / f"{name}.json").write_text(text)
    for name in templates:
        (root / "dataset" / "templates" / f"{name}.json").write_text(json.dumps({"title": f"{name} Meme Template"}))
    for name in images:
        (root / "dataset" / "templates" / "img" / f"{name}.png").write_bytes(b"not really a png")
    return root


def test_imgflip_layout_skips_bad_records_and_reports_templates(tmp_path):
    good = {"post": "https://imgflip.com/i/1", "boxes": ["top", "bottom"]}
    memes = {
        "Good": [good, {"boxes": ["no post"]}, "not an object", {"post": "x"}, {"post": "y", "boxes": [1, 2]}],
        "Broken": "{ not json",
        "NotAList": {"boxes": []},
    }
    raw = read_imgflip575k(_layout(tmp_path, memes, templates=["Good", "NoCaptions"], images=["Good", "NoCaptions"]))
    assert [c.boxes for c in raw.captions] == [("top", "bottom"), ("no post",)]
    assert raw.captions[0].id == "https://imgflip.com/i/1"
    assert raw.captions[1].id == content_id("Good", ("no post",))  # no identity: hashed content
    assert raw.skipped == {
        "record is not an object": 1,
        "boxes missing or not a list": 1,
        "a box is not text": 1,
        "caption file is not valid JSON": 1,
        "caption file is not a list": 1,
    }
    report = raw.report()
    assert report["templates_without_captions"] == ["NoCaptions"]
    assert raw.templates["Good"].title == "Good" and raw.templates["Good"].image.endswith("Good.png")


def test_template_without_image_is_reported(tmp_path):
    raw = read_imgflip575k(_layout(tmp_path, {"Lonely": [{"post": "p", "boxes": ["a"]}]}))
    assert raw.report()["templates_without_image"] == ["Lonely"]


def test_plain_jsonl(tmp_path):
    path = tmp_path / "captions.jsonl"
    rows = [
        {"template": "drake", "image": "img/drake.jpg", "boxes": ["no", "yes"], "id": "a1"},
        {"template": "drake", "boxes": ["only one"]},
        {"boxes": ["no template"]},
        {"template": "cat", "boxes": "not a list"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n\n[1, 2]\n")
    raw = read_plain(path)
    assert [(c.id, c.template, c.boxes) for c in raw.captions][0] == ("a1", "drake", ("no", "yes"))
    assert len(raw.captions) == 2
    assert raw.templates["drake"].image == str((tmp_path / "img" / "drake.jpg").resolve())
    assert raw.skipped == {"template missing": 1, "boxes missing or not a list": 1, "row is not a JSON object": 2}


def test_plain_csv_with_json_or_pipe_boxes(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text(
        "template,image,boxes\n"
        'drake,drake.jpg,"[""no"", ""yes""]"\n'
        "drake,,top text | bottom text\n"
        ",,orphan\n"
        'cat,,"[broken""]"\n'
    )
    raw = read_source(path)
    assert [c.boxes for c in raw.captions] == [("no", "yes"), ("top text", "bottom text")]
    assert raw.skipped == {"template missing": 1, "boxes is not a valid JSON array": 1}


def test_a_broken_csv_record_costs_one_row_not_the_rest_of_the_file(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text(
        "template,image,boxes\n"
        'cat,,"[unclosed quote\n'  # without resynchronising, this would swallow every row below
        "drake,,top | bottom\n"
        "\n"
        'dog,,"a box\nover two lines"\n'
        "grumpy,,a|b is one box\n"
        "x,too,many,fields\n"
        "cat,,last row\n"
    )
    raw = read_plain(path)
    assert [(c.template, c.boxes) for c in raw.captions] == [
        ("drake", ("top", "bottom")),
        ("dog", ("a box\nover two lines",)),
        ("grumpy", ("a|b is one box",)),
        ("cat", ("last row",)),
    ]
    assert raw.skipped == {"row is not valid CSV": 2}


def test_missing_sources_are_errors(tmp_path):
    with pytest.raises(DataSourceError, match="MEMEFLY_DATASET_DIR"):
        read_source(tmp_path / "absent")
    with pytest.raises(DataSourceError, match="dataset/memes"):
        read_imgflip575k(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataSourceError, match=".csv or .jsonl"):
        read_source(tmp_path / "x.txt")


@pytest.mark.slow
@pytest.mark.shared_data
def test_reads_the_shared_imgflip575k_copy():
    raw = read_imgflip575k(shared_dataset_or_skip())
    report = raw.report()
    assert report["templates"] == 100
    assert len(report["templates_without_captions"]) == 12
    assert len({c.template for c in raw.captions}) == 88
    assert len(raw.captions) > 300_000 and not raw.skipped
    assert all(c.id.startswith("https://imgflip.com/i/") for c in raw.captions[:1000])
