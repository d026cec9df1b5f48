"""Mini-world tasks: answers re-derived here from the Scene (and pixels) by our own parsing."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from frankenlab.errors import TaskError
from frankenlab.miniworld import ABILITY_OF, FAMILIES, export_tasks, make_item, make_split
from frankenlab.synth import Scene
from frankenlab.tasks import load_jsonl, load_tasks

COLOR_RE = "red|green|blue|yellow"
NOUN_RE = "shapes?|circles?|squares?|triangles?|cross(?:es)?"
KIND_OF_NOUN = {"shapes": None, "circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross"}


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def count_of(scene: Scene, color: str | None, noun: str) -> int:
    kind = KIND_OF_NOUN[noun]
    return len([o for o in scene.objects if (color is None or o.color == color) and (kind is None or o.kind == kind)])


def arith(x: int, op: str, k: int) -> int:
    return {"plus": x + k, "times": x * k}[op]


def expected_answer(family: str, question: str, scene: Scene) -> str:
    """Parse the question with our own patterns and answer it from the scene record."""
    at = {(o.row + 1, o.col + 1): o for o in scene.objects}
    if family == "count":
        m = re.fullmatch(rf"How many (?:({COLOR_RE}) )?({NOUN_RE}) are there\?", question)
        return str(count_of(scene, m[1], m[2]))
    if family == "count_arith":
        m = re.fullmatch(rf"How many (?:({COLOR_RE}) )?({NOUN_RE}) are there, (plus|times) (\d)\?", question)
        return str(arith(count_of(scene, m[1], m[2]), m[3], int(m[4])))
    if family == "color":
        m = re.fullmatch(r"What color is the shape at row (\d), column (\d)\?", question)
        return at[(int(m[1]), int(m[2]))].color
    if family == "shape":
        m = re.fullmatch(r"What shape is at row (\d), column (\d)\?", question)
        return at[(int(m[1]), int(m[2]))].kind
    if family == "read_digit":
        assert question == "What digit is shown?" and len(scene.digits) == 1
        return str(scene.digits[0].value)
    if family == "digit_arith":
        m = re.fullmatch(r"What is the digit shown (plus|times) (\d)\?", question)
        return str(arith(scene.digits[0].value, m[1], int(m[2])))
    if family == "locate":
        m = re.fullmatch(rf"Where is the ({COLOR_RE}) (\w+)\?", question)
        hits = [o for o in scene.objects if (o.color, o.kind) == (m[1], m[2])]
        assert len(hits) == 1, "a locate question must name a unique object"
        return f"{hits[0].row + 1},{hits[0].col + 1}"
    if family == "text_arith":
        m = re.fullmatch(r"The digit shown is (\d)\. What is the digit shown (plus|times) (\d)\?", question)
        if m:
            assert int(m[1]) == scene.digits[0].value
            return str(arith(int(m[1]), m[2], int(m[3])))
        m = re.fullmatch(
            rf"There (is|are) (\d+) (?:({COLOR_RE}) )?({NOUN_RE})\. "
            rf"How many (?:({COLOR_RE}) )?({NOUN_RE}) are there, (plus|times) (\d)\?",
            question,
        )
        assert m[3] == m[5]
        n = count_of(scene, m[5], m[6])
        assert int(m[2]) == n and (m[1] == "is") == (n == 1), "the stated fact must be true of the scene"
        return str(arith(n, m[7], int(m[8])))
    raise AssertionError(family)


@pytest.fixture(scope="module")
def train_items():
    return make_split(240, seed=1, split="train")


@pytest.fixture(scope="module")
def test_items():
    return make_split(160, seed=1, split="test")


def test_families_and_abilities() -> None:
    assert set(FAMILIES) == set(ABILITY_OF)
    perception = {"count", "color", "shape", "read_digit", "locate"}
    assert {f for f, a in ABILITY_OF.items() if a == "perception"} == perception
    assert {f for f, a in ABILITY_OF.items() if a == "vision_to_reasoning"} == {"count_arith", "digit_arith"}
    assert {f for f, a in ABILITY_OF.items() if a == "text_reasoning"} == {"text_arith"}


def test_every_answer_rederived_from_the_scene(train_items, test_items) -> None:
    for it in [*train_items, *test_items]:
        assert it.answer == expected_answer(it.family, it.question, it.meta["scene"]), it
        assert it.meta["ability"] == ABILITY_OF[it.family]
        assert it.answer_type == ("text" if it.family in ("color", "shape", "locate") else "numeric")
        assert (it.image is None) == (it.family == "text_arith")
        assert len(it.answer) <= 8
        described = re.findall(r"a (\w+) (\w+) at row (\d), column (\d)", it.description)
        objects = it.meta["scene"].objects
        assert sorted(described) == sorted((o.color, o.kind, str(o.row + 1), str(o.col + 1)) for o in objects)
    assert {it.family for it in train_items} == set(FAMILIES)
    assert [it.family for it in train_items[:8]] == list(FAMILIES)


def test_pixels_agree_with_answers(train_items) -> None:
    for it in train_items:
        if it.image is None:
            continue
        arr = np.asarray(it.image)
        assert it.image.size == (84, 84)
        centres = [arr[r * 28 + 14, c * 28 + 14] for r in range(3) for c in range(3)]
        if it.family == "count" and it.question == "How many shapes are there?":
            assert str(sum((px != 255).any() for px in centres)) == it.answer
        if it.family == "color":
            r, c = (int(x) - 1 for x in re.findall(r"\d", it.question))
            px = arr[r * 28 + 14, c * 28 + 14].astype(int)
            name = "yellow" if px[0] > 150 and px[1] > 150 else ("red", "green", "blue")[int(np.argmax(px))]
            assert name == it.answer


def test_same_seed_identical_items_and_png_bytes_other_seed_differs() -> None:
    a, b = make_split(24, seed=7), make_split(24, seed=7)
    def fields(items):
        return [(x.id, x.question, x.answer, x.meta["scene"]) for x in items]

    assert fields(a) == fields(b)
    assert [png(x.image) for x in a if x.image] == [png(x.image) for x in b if x.image]
    c = make_split(24, seed=8)
    assert [(x.question, x.meta["scene"]) for x in a] != [(x.question, x.meta["scene"]) for x in c]
    one, two = make_item("locate", random.Random(3), 4), make_item("locate", random.Random(3), 4)
    assert one.id == "locate-00004"
    assert (one.question, one.meta["scene"], png(one.image)) == (two.question, two.meta["scene"], png(two.image))


def test_train_and_test_are_disjoint_and_unique(train_items, test_items) -> None:
    def keys(items):
        return [(it.question, it.meta["scene"].key() if it.image is not None else None) for it in items]

    tr, te = keys(train_items), keys(test_items)
    assert len(set(tr)) == len(tr) and len(set(te)) == len(te)
    assert not set(tr) & set(te)
    assert not {it.question for it in train_items if it.image is None} & {it.question for it in test_items}
    other_seed = keys(make_split(160, seed=2, split="test"))
    assert not set(tr) & set(other_seed), "disjointness must hold across seeds too"
    assert all(it.id.startswith("test-") for it in test_items) and all(it.id.startswith("train-") for it in train_items)


def test_small_family_exhaustion_is_a_clear_error() -> None:
    with pytest.raises(TaskError, match="ran out of new test items.*unique=False"):
        make_split(600, seed=0, families=["text_arith"], split="test")
    assert len(make_split(600, seed=0, families=["text_arith"], split="test", unique=False)) == 600


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"split": "val"}, "unknown split 'val'"), ({"families": ["count", "draw"]}, "unknown or no task families")],
)
def test_make_split_rejects_bad_arguments(kwargs, fragment) -> None:
    with pytest.raises(TaskError, match=re.escape(fragment)):
        make_split(4, seed=0, **kwargs)
    with pytest.raises(TaskError, match="unknown task family 'draw'"):
        make_item("draw", random.Random(0), 0)


def test_export_then_load_round_trip(tmp_path: Path) -> None:
    items = make_split(16, seed=3, split="test")
    path = export_tasks(items, tmp_path / "out", "mini")
    assert path == tmp_path / "out" / "mini.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["image"] for r in raw] == [None if it.image is None else f"images/{it.id}.png" for it in items]
    assert all(r["choices"] is None for r in raw)
    assert {r["answer_type"] for r in raw} == {"int", "str"}  # the file keeps the mini-world's vocabulary
    loaded = load_jsonl(path).items
    assert len(loaded) == len(items)
    for got, it in zip(loaded, items):
        for key in ("id", "question", "answer", "answer_type", "family", "description"):
            assert getattr(got, key) == getattr(it, key)
        assert got.meta["ability"] == it.meta["ability"] and got.task == "mini"
        if it.image is None:
            assert got.image is None
        else:
            assert Path(got.image).is_absolute()
            assert (np.asarray(got.load_image()) == np.asarray(it.image)).all()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["images", "mini.jsonl"]


def test_export_validates_before_writing(tmp_path: Path) -> None:
    item = make_split(1, seed=0)[0]
    with pytest.raises(TaskError, match="duplicate item ids"):
        export_tasks([item, item], tmp_path, "x")
    with pytest.raises(TaskError, match="file name"):
        export_tasks([item], tmp_path, "../x")
    assert list(tmp_path.iterdir()) == []


GOOD = {"id": "a", "question": "How many shapes are there?", "image": None, "answer": "3", "answer_type": "int"}


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**GOOD, "question": ""}), "'question' must be a non-empty string"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), "'answer' must be"),
        (json.dumps({**GOOD, "answer_type": "weird"}), "answer_type 'weird' is unknown"),
        (json.dumps({**GOOD, "answer": "three"}), "is not an integer"),
        (json.dumps({**GOOD, "answer_type": "choice"}), "needs 'choices'"),
        (json.dumps({**GOOD, "choices": "abc"}), "'choices' must be null or a list"),
        (json.dumps({**GOOD, "image": "images/nope.png"}), "image 'images/nope.png' not found"),
        (json.dumps({**GOOD, "id": "first"}), "id 'first' already used"),
    ],
)
def test_malformed_rows_name_the_line(tmp_path: Path, bad: str, fragment: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({**GOOD, "id": "first"}) + "\n\n" + bad + "\n")
    with pytest.raises(TaskError, match=rf"line 3: .*{re.escape(fragment)}"):
        load_jsonl(path)


def test_load_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="does not exist"):
        load_jsonl(tmp_path / "absent.jsonl")
    (tmp_path / "ok.jsonl").write_text(json.dumps({**GOOD, "answer": 3}) + "\n")
    assert load_jsonl(tmp_path / "ok.jsonl").items[0].answer == "3"


def test_generated_tasks_load_by_name() -> None:
    """``miniworld:FAMILY`` through the one task loader: the same items as make_split's test split, with images."""
    (task,) = load_tasks("miniworld:digit_arith", n_generated=6, seed=2)
    direct = make_split(6, 2, ["digit_arith"], split="test")
    assert task.name == "miniworld_digit_arith" and [it.id for it in task.items] == [it.id for it in direct]
    assert [it.answer for it in task.items] == [it.answer for it in direct]
    assert all(it.has_image and it.task == task.name for it in task.items)
    (bare,) = load_tasks("miniworld", n_generated=3)
    assert bare.name == "miniworld_text_arith" and not any(it.has_image for it in bare.items)
    (every,) = load_tasks("mw=miniworld:all", n_generated=len(FAMILIES))
    assert every.name == "mw" and {it.family for it in every.items} == set(FAMILIES)
    assert load_tasks("miniworld:count", n_generated=4, seed=1)[0].version != task.version
    with pytest.raises(TaskError, match="no variant 'draw'.*miniworld:count"):
        load_tasks("miniworld:draw")


def test_count_answers_are_balanced() -> None:
    answers = [it.answer for it in make_split(400, seed=0, families=["count"], unique=False)]
    shares = {a: answers.count(a) / len(answers) for a in set(answers)}
    assert set(shares) == {"0", "1", "2", "3", "4", "5"}
    assert max(shares.values()) < 0.3, f"one count answer dominates: {shares}"


def test_generated_text_arith_beyond_its_distinct_items_repeats_with_a_warning(caplog) -> None:
    (task,) = load_tasks("miniworld:text_arith", n_generated=600)
    assert len(task.items) == 600 and "repeats allowed" in caplog.text
