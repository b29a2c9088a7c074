"""Cleaning: each step changes or drops what it should, and counts it."""

from model_export.cleaning import MAX_BOX_CHARS, clean, normalize_unicode
from model_export.datasets import Caption


def _c(i, boxes, template="T"):
    return Caption(f"id{i}", template, tuple(boxes))


def test_each_step_is_counted():
    captions = [
        _c(0, ["ｆｕｌｌ ｗｉｄｔｈ", "ok"]),  # unicode normalised
        _c(1, ["  lots   of\tspace ", "x"]),  # whitespace
        _c(2, ["top", "", ""]),  # trailing empty boxes removed
        _c(3, ["", "  "]),  # no text
        _c(4, ["a" * (MAX_BOX_CHARS + 1)]),  # over-long
        _c(5, ["Top", "Bottom"]),
        _c(6, ["top", "BOTTOM"]),  # duplicate of 5 (case-insensitive) in the same template
        _c(7, ["top", "bottom"], template="Other"),  # same text, other template: kept
        _c(8, ["Ik weet niet wat ik moet doen met mijn leven"]),  # Dutch
        _c(9, ["this is such a shit day"]),  # offensive: flagged, kept
        _c(10, ["", "bottom only"]),  # inner empty box keeps its position
    ]
    kept, report = clean(captions)
    ids = [c.id for c in kept]
    assert ids == ["id0", "id1", "id2", "id5", "id7", "id9", "id10"]
    assert report.input == 11 and report.output == 7
    assert report.changed["unicode normalised"] == 1
    assert report.changed["whitespace normalised"] >= 2  # case 1, and case 3's blank box
    assert report.changed["trailing empty boxes removed"] == 1
    assert report.dropped == {"no text": 1, "over-long": 1, "duplicate within template": 1, "non-English": 1}
    assert report.flagged_offensive == 1
    by_id = {c.id: c for c in kept}
    assert by_id["id0"].boxes == ("full width", "ok")
    assert by_id["id1"].boxes == ("lots of space", "x")
    assert by_id["id2"].boxes == ("top",)
    assert by_id["id10"].boxes == ("", "bottom only")
    assert by_id["id9"].offensive and not by_id["id5"].offensive


def test_short_or_english_slang_is_not_called_foreign():
    kept, report = clean(
        [_c(i, b) for i, b in enumerate([["yes"], ["NOPE NOPE"], ["when u see it lol"], ["Boy", "Boi"]])]
    )
    assert len(kept) == 4 and "non-English" not in report.dropped


def test_normalize_unicode_removes_invisible_characters():
    assert normalize_unicode("a\u200bb\ufeffc") == "abc"
    assert normalize_unicode("𝐛𝐨𝐥𝐝") == "bold"
