"""Probe pairs: answers read back from the pixels, and only the probed attribute may differ."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frankenlab.errors import TaskError
from frankenlab.miniworld import PROBE_TASKS, load_probe_pairs, make_probe_pairs, write_probe_pairs
from frankenlab.synth import DIGIT_GLYPHS

S = 28


def cells(img) -> dict[tuple[int, int], np.ndarray]:
    arr = np.asarray(img)
    return {(r, c): arr[r * S : (r + 1) * S, c * S : (c + 1) * S] for r in range(3) for c in range(3)}


def occupied(img) -> set[tuple[int, int]]:
    return {rc for rc, block in cells(img).items() if (block != 255).any()}


def read_digit(block: np.ndarray) -> str:
    """Read a digit by matching its ink, downsampled by 3, against the 5x7 glyph table."""
    ink = (block == 0).all(axis=-1)
    ys, xs = np.nonzero(ink)
    top, left = ys.min(), 6  # glyphs are 15 px wide, centred: columns 6..20
    small = ink[top : top + 21 : 3, left : left + 15 : 3]
    glyphs = [np.array([[ch == "#" for ch in line] for line in g]) for g in DIGIT_GLYPHS]
    matches = [d for d, g in enumerate(glyphs) if (g == small).all()]
    assert len(matches) == 1
    return str(matches[0])


def colour_at(block: np.ndarray) -> str:
    r, g, b = (int(v) for v in block[14, 14])
    return "yellow" if r > 150 and g > 150 else ("red", "green", "blue")[int(np.argmax([r, g, b]))]


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pairs():
    return make_probe_pairs(20, seed=0)


def test_tasks_counts_ids_and_same_sizes(pairs) -> None:
    assert [p["task"] for p in pairs] == [t for t in PROBE_TASKS for _ in range(20)]
    assert len({p["id"] for p in pairs}) == len(pairs)
    for p in pairs:
        assert p["meta"]["target_answer"] != p["meta"]["source_answer"]
        assert p["target_image"].size == p["source_image"].size == (84, 84)
        assert p["target_image"].mode == p["source_image"].mode == "RGB"
        assert png(p["target_image"]) != png(p["source_image"])
    keys = [(p["prompt"], png(p["target_image"]), png(p["source_image"])) for p in pairs]
    assert len(set(keys)) == len(keys)


def test_counting_pairs_differ_only_by_whole_objects(pairs) -> None:
    for p in (p for p in pairs if p["task"] == "counting"):
        t, s = p["target_image"], p["source_image"]
        assert p["prompt"] == "How many shapes are there?"
        meta = p["meta"]
        assert (str(len(occupied(t))), str(len(occupied(s)))) == (meta["target_answer"], meta["source_answer"])
        small, big = sorted((t, s), key=lambda im: len(occupied(im)))
        assert occupied(small) < occupied(big)
        ct, cs = cells(small), cells(big)
        for rc in occupied(small):
            assert (ct[rc] == cs[rc]).all(), "objects present in both images must be identical"


def test_ocr_pairs_change_one_digit_in_one_cell(pairs) -> None:
    for p in (p for p in pairs if p["task"] == "ocr"):
        t, s = p["target_image"], p["source_image"]
        assert p["prompt"] == "What digit is shown?"
        assert occupied(t) == occupied(s) and len(occupied(t)) == 1
        (rc,) = occupied(t)
        assert read_digit(cells(t)[rc]) == p["meta"]["target_answer"]
        assert read_digit(cells(s)[rc]) == p["meta"]["source_answer"]


def test_grounding_pairs_move_only_the_named_object(pairs) -> None:
    for p in (p for p in pairs if p["task"] == "grounding"):
        t, s = cells(p["target_image"]), cells(p["source_image"])
        color, _kind = re.fullmatch(r"Where is the (\w+) (\w+)\?", p["prompt"]).groups()
        changed = {rc for rc in t if not (t[rc] == s[rc]).all()}
        tr, tc = (int(x) - 1 for x in p["meta"]["target_answer"].split(","))
        sr, sc = (int(x) - 1 for x in p["meta"]["source_answer"].split(","))
        assert changed == {(tr, tc), (sr, sc)}
        assert (t[(tr, tc)] != 255).any() and (s[(tr, tc)] == 255).all()
        assert (s[(sr, sc)] != 255).any() and (t[(sr, sc)] == 255).all()
        assert (t[(tr, tc)] == s[(sr, sc)]).all(), "the moved object must look the same"
        assert colour_at(t[(tr, tc)]) == color


def test_recognition_pairs_change_colour_or_shape_of_the_only_object(pairs) -> None:
    seen = set()
    for p in (p for p in pairs if p["task"] == "recognition"):
        t, s = cells(p["target_image"]), cells(p["source_image"])
        assert len(occupied(p["target_image"])) == 1 and occupied(p["target_image"]) == occupied(p["source_image"])
        (rc,) = occupied(p["target_image"])
        m = re.fullmatch(r"What (color is the shape|shape is) at row (\d), column (\d)\?", p["prompt"])
        assert (int(m[2]) - 1, int(m[3]) - 1) == rc
        ink_t, ink_s = (t[rc] != 255).any(-1), (s[rc] != 255).any(-1)
        if m[1].startswith("color"):
            seen.add("color")
            assert (ink_t == ink_s).all(), "a colour pair keeps the shape"
            assert (colour_at(t[rc]), colour_at(s[rc])) == (p["meta"]["target_answer"], p["meta"]["source_answer"])
        else:
            seen.add("shape")
            assert not (ink_t == ink_s).all()
            assert colour_at(t[rc]) == colour_at(s[rc]), "a shape pair keeps the colour"
    assert seen == {"color", "shape"}


def test_deterministic_from_seed() -> None:
    a, b, c = make_probe_pairs(3, seed=4), make_probe_pairs(3, seed=4), make_probe_pairs(3, seed=5)

    def sig(rows):
        return [(r["id"], r["prompt"], r["meta"], png(r["target_image"]), png(r["source_image"])) for r in rows]

    assert sig(a) == sig(b)
    assert sig(a) != sig(c)


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    path = write_probe_pairs(tmp_path / "probes", n_per_task=3, seed=1)
    assert path == tmp_path / "probes" / "pairs.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["target_image"] == f"images/{r['id']}_target.png" for r in raw)
    rows = load_probe_pairs(path)
    mem = make_probe_pairs(3, seed=1)
    assert [r["meta"] for r in rows] == [m["meta"] for m in mem]
    for row, m in zip(rows, mem):
        with Image.open(row["target_image"]) as im:
            assert (np.asarray(im.convert("RGB")) == np.asarray(m["target_image"])).all()


def test_load_rejects_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    path = write_probe_pairs(tmp_path, n_per_task=1, seed=0)
    good = path.read_text().splitlines()
    row = json.loads(good[0])
    cases = [
        ({**row, "id": "x1", "task": "shopping"}, "task 'shopping' is not one of"),
        ({**row, "id": "x2", "meta": {"target_answer": "3", "source_answer": "3"}}, "answers are both '3'"),
        ({**row, "id": "x3", "source_image": "images/missing.png"}, "source_image 'images/missing.png' not found"),
        ({**row, "id": "x4", "prompt": ""}, "'prompt' must be a non-empty string"),
        ({**row, "id": "x5", "meta": {"target_answer": 3}}, "'meta' must be an object"),
        (row, f"id {row['id']!r} already used on line 1"),
    ]
    for bad, fragment in cases:
        path.write_text("\n".join([*good, json.dumps(bad)]) + "\n")
        with pytest.raises(TaskError, match=rf"line {len(good) + 1}: .*{re.escape(fragment)}"):
            load_probe_pairs(path)
    Image.new("RGB", (56, 84)).save(tmp_path / "images" / "odd.png")
    path.write_text(json.dumps({**row, "source_image": "images/odd.png"}) + "\n")
    with pytest.raises(TaskError, match=r"line 1: .*same size"):
        load_probe_pairs(path)
    path.write_text("oops\n")
    with pytest.raises(TaskError, match="line 1: not valid JSON"):
        load_probe_pairs(path)
