from __future__ import annotations

import io
import json
import sys

import pandas as pd
import pytest
from PIL import Image

from frankenlab.errors import TaskError
from frankenlab.miniworld.tasks import export_tasks, make_split
from frankenlab.tasks import load_jsonl, load_parquet, load_task, load_tasks, parse_task_specs
from frankenlab.tasks.registry import gsm8k_gold


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("mw")
    items = make_split(8, 0, split="test")
    return items, export_tasks(items, d, "mini")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_reads_miniworld_export_as_is(exported):
    items, path = exported
    task = load_jsonl(path)
    assert task.name == "mini" and task.version.startswith("sha256:")
    assert [it.id for it in task.items] == [it.id for it in items]
    for src, it in zip(items, task.items):
        assert it.question == src.question and it.answer == src.answer and it.description == src.description
        assert it.answer_type == src.answer_type and it.answer_type in ("numeric", "text")
        assert it.meta["family"] == src.family
        assert it.has_image == (src.image is not None)
        if it.has_image:
            assert list(it.load_image().getdata()) == list(src.load_image().getdata())


def test_jsonl_errors_name_the_line(tmp_path):
    good = {"id": "a", "question": "q?", "answer": "1"}
    cases = [
        ([good, "{not json"], "line 2: not valid JSON"),
        ([good, {"id": "b", "answer": "1"}], "line 2: field 'question'"),
        ([good, good], "line 2: id 'a' already used"),
        ([{**good, "image": "nope.png"}], "line 1: image 'nope.png' not found"),
        ([{**good, "answer_type": "weird"}], "line 1: answer_type 'weird' is unknown"),
        ([{**good, "choices": ["x", "y"], "answer": "z"}], "line 1:"),
        ([{**good, "answer_type": "mcq"}], "needs 'choices'"),
    ]
    for rows, message in cases:
        with pytest.raises(TaskError, match=message):
            load_jsonl(_write(tmp_path / "t.jsonl", rows))
    with pytest.raises(TaskError, match="does not exist"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_choices_and_numbers(tmp_path):
    rows = [{"id": 1, "question": "Which?", "choices": ["red", "blue"], "answer": "blue"},
            {"id": 2, "question": "Which?", "choices": ["red", "blue"], "answer": "A", "answer_type": "choice"},
            {"id": 3, "question": "How many?", "answer": 7, "answer_type": "int"}]
    task = load_jsonl(_write(tmp_path / "c.jsonl", rows))
    assert [it.id for it in task.items] == ["1", "2", "3"]
    assert task.items[0].choices == ("red", "blue") and task.items[0].answer_type is None
    assert task.items[1].answer_type == "mcq" and task.items[2].answer == "7"


def test_parquet_matches_jsonl(tmp_path, exported):
    items, path = exported
    jtask = load_jsonl(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    as_paths = path.parent / "paths.parquet"  # images as paths relative to the file
    pd.DataFrame(rows).to_parquet(as_paths)
    for r in rows:  # images as datasets-style {bytes, path} structs
        if r["image"]:
            buf = io.BytesIO()
            Image.open(path.parent / r["image"]).save(buf, format="PNG")
            r["image"] = {"bytes": buf.getvalue(), "path": None}
    as_bytes = path.parent / "bytes.parquet"
    pd.DataFrame(rows).to_parquet(as_bytes)
    for target in (as_paths, as_bytes):
        ptask = load_parquet(target)
        assert ptask.items == jtask.items  # images are not part of equality; compare them separately
        for a, b in zip(ptask.items, jtask.items):
            if a.has_image:
                assert a.load_image().tobytes() == b.load_image().tobytes()


def test_subsample_is_deterministic_nested_and_ordered(exported):
    task = load_jsonl(exported[1])
    a, b = task.subsample(4, seed=3), task.subsample(4, seed=3)
    assert a.ids() == b.ids() and len(a.ids()) == 4
    assert set(a.ids()) <= set(task.subsample(6, seed=3).ids())
    assert a.ids() == [i for i in task.ids() if i in set(a.ids())]
    assert {tuple(task.subsample(4, seed=s).ids()) for s in range(6)} != {tuple(a.ids())}
    assert task.subsample(None).ids() == task.ids() and task.subsample(100).ids() == task.ids()
    assert task.select(a.ids()).ids() == a.ids()
    with pytest.raises(TaskError, match="no items"):
        task.select(["nope"])


def test_specs_names_and_collisions(tmp_path, exported):
    path = exported[1]
    assert parse_task_specs(f"{path},gsm8k, x={path}") == [(None, str(path)), (None, "gsm8k"), ("x", str(path))]
    a, b = load_tasks([f"a={path}", f"b={path}"])
    assert (a.name, b.name) == ("a", "b") and a.items == b.items
    with pytest.raises(TaskError, match="used twice"):
        load_tasks(f"{path},{path}")
    with pytest.raises(TaskError, match="built-ins are"):
        load_task("no-such-task")


def _fake_hf(rows_by_id):
    calls = []

    def load_dataset(dataset_id, config=None, split=None):
        calls.append((dataset_id, config, split))
        return rows_by_id[dataset_id]

    return load_dataset, calls


def test_hf_adapters_with_fake_datasets():
    img = Image.new("RGB", (8, 6), (255, 0, 0))
    vista = [
        {"pid": "1", "question": "Which is bigger?", "decoded_image": img, "choices": ["2", "5"], "answer": "5",
         "question_type": "multi_choice", "answer_type": "text", "metadata": {"category": "math-targeted-vqa"}},
        {"pid": "2", "question": "What is the value?", "decoded_image": img, "choices": None, "answer": "1.5",
         "question_type": "free_form", "answer_type": "float", "metadata": {"category": "general-vqa"}},
        {"pid": "3", "question": "How many?", "decoded_image": img, "choices": None, "answer": "4",
         "question_type": "free_form", "answer_type": "integer", "metadata": {"category": "math-targeted-vqa"}},
    ]
    gsm = [{"question": "Tom has 1,000 apples...", "answer": "Some reasoning\n#### 1,234"}]
    math500 = [{"problem": "Compute 1/2+1/4.", "answer": "\\frac{3}{4}", "unique_id": "test/algebra/1.json",
                "subject": "Algebra", "level": 2}]
    verse = [{"sample_index": 7, "question": "Choices: A: 1 B: 2", "image": img, "answer": "B",
              "question_type": "multi-choice", "problem_version": "Vision Only", "problem_index": 3}]
    fake, calls = _fake_hf({"AI4Math/MathVista": vista, "openai/gsm8k": gsm, "HuggingFaceH4/MATH-500": math500,
                            "AI4Math/MathVerse": verse})
    general, mathy, g, m, v = load_tasks("mathvista,gsm8k,math500,mathverse", load_dataset=fake)
    assert calls.count(("AI4Math/MathVista", None, "testmini")) == 1  # one load for both categories
    assert (general.name, general.ids()) == ("mathvista-general", ["2"])
    assert (mathy.name, mathy.ids()) == ("mathvista-math", ["1", "3"])
    assert mathy.items[0].answer_type == "mcq" and mathy.items[0].choices == ("2", "5")
    assert mathy.items[1].answer_type == "numeric" and mathy.items[1].has_image
    assert g.items[0].answer == "1234" and not g.items[0].has_image and g.items[0].answer_type == "numeric"
    assert m.items[0].id == "test/algebra/1.json" and m.items[0].answer_type == "math"
    assert v.items[0].answer_type == "mcq" and v.items[0].meta["problem_version"] == "Vision Only"
    assert gsm8k_gold("x #### 72") == "72"


def test_offline_and_missing_datasets_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))

    def offline(*args, **kw):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    with pytest.raises(TaskError, match=r"openai/gsm8k.*HF_HUB_OFFLINE set.*load_dataset\('openai/gsm8k', 'main'"):
        load_tasks("gsm8k", load_dataset=offline)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(TaskError, match=r"needs the `datasets` package.*MATH-500"):
        load_tasks("math500")


def test_math_dataset_spellings(tmp_path):
    """``problem``/``solution``/``unique_id`` rows (MATH-style) and GSM8K's ``#### N`` load as items; a row
    without any id is named by its 0-based position."""
    rows = [
        {"unique_id": "u1", "problem": "What is 1+1?", "solution": "So it is $\\boxed{2}$."},
        {"question": "Tom has 3 apples...", "answer": "He has 3 + 1,000 = 1,003 apples.\n#### 1,003"},
        {"prompt": "Say 7.", "final_answer": 7},
    ]
    task = load_jsonl(_write(tmp_path / "m.jsonl", rows))
    assert [(it.id, it.question, it.answer) for it in task.items] == [
        ("u1", "What is 1+1?", "2"), ("1", "Tom has 3 apples...", "1003"), ("2", "Say 7.", "7")]
    with pytest.raises(TaskError, match=r"line 1: field 'answer'.*also looked for.*'solution'"):
        load_jsonl(_write(tmp_path / "n.jsonl", [{"problem": "p", "solution": "no boxed answer here"}]))
    with pytest.raises(TaskError, match=r"line 1: field 'question'.*also looked for 'problem'"):
        load_jsonl(_write(tmp_path / "q.jsonl", [{"answer": "1"}]))


def test_registered_generator_loads_by_prefix():
    """A package registers a generated task; load_tasks makes it by name with the caller's count and seed."""
    from frankenlab.tasks import GeneratedTaskSpec, Task, TaskItem, register_generator
    from frankenlab.tasks.registry import generator_for

    def make(variant, n, seed):
        items = tuple(TaskItem(id=str(i), question=f"{variant or 'x'} {seed}+{i}?", answer=str(seed + i))
                      for i in range(n))
        return Task(f"toy_{variant or 'x'}", items, "generated:toy", f"seed={seed}")

    register_generator(GeneratedTaskSpec("toygen", make, ("a", "b"), "a test generator"))
    (a, bare) = load_tasks("toygen:a,toygen", n_generated=3, seed=5)
    assert (a.name, bare.name) == ("toy_a", "toy_x")
    assert [it.answer for it in a.items] == ["5", "6", "7"] and all(it.task == "toy_a" for it in a.items)
    assert len(load_tasks("toygen:b")[0].items) == 100  # the default count
    with pytest.raises(TaskError, match="no variant 'c'"):
        load_tasks("toygen:c")
    assert generator_for("no-such-prefix:x") is None and generator_for("a.jsonl") is None
    with pytest.raises(TaskError, match="already a built-in"):
        register_generator(GeneratedTaskSpec("gsm8k", make, (), "clash"))


def test_a_directory_does_not_shadow_a_task_name(tmp_path, monkeypatch):
    """A `miniworld/` build folder in the working directory leaves `--tasks miniworld` the generated task."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "miniworld").mkdir()
    (task,) = load_tasks("miniworld", n_generated=2)
    assert task.name == "miniworld_text_arith" and len(task.items) == 2
