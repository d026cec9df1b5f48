"""ItemStore: the probes' resume cache on the shared output-directory check and record store."""

from __future__ import annotations

import json

import pytest

from frankenlab.errors import OutputError
from frankenlab.probe.store import ItemStore


def test_resume_skips_finished_items_and_retries_failed_ones(tmp_path):
    out = tmp_path / "p"
    store = ItemStore(out, "vision", "k1", final_names=("vision_layers.csv",))
    assert store.path == out / "vision_items.jsonl" and store.key == "k1" and store.done == {}
    assert json.loads(store.marker.read_text()) == {"probe": "vision", "key": "k1"}
    store.add({"key": "a", "status": "ok", "v": 1})
    store.add({"key": "b", "status": "failed", "error": "boom"})
    assert set(store.done) == {"a"} and [r["key"] for r in store.records()] == ["a", "b"]
    (out / "vision_layers.csv").write_text("x\n")
    (out / "manifest.json").write_text("{}")
    (out / ".done-vision.json").write_text("{}")

    again = ItemStore(out, "vision", "k1", final_names=("vision_layers.csv",))
    assert set(again.done) == {"a"} and [r["key"] for r in again] == ["a"]  # b is computed again
    again.add({"key": "b", "status": "ok", "v": 2})
    assert set(again.done) == {"a", "b"}


def test_other_settings_are_refused_unless_overwrite(tmp_path):
    out = tmp_path / "p"
    ItemStore(out, "kl", "k1").add({"key": "a", "status": "ok"})
    with pytest.raises(OutputError, match="holds kl probe results computed with other inputs or settings"):
        ItemStore(out, "kl", "k2")
    fresh = ItemStore(out, "kl", "k2", overwrite=True)
    assert fresh.done == {} and fresh.records() == []
    assert json.loads(fresh.marker.read_text())["key"] == "k2"


def test_foreign_directory_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files that are not this lens probe's output \(notes.txt\)"):
        ItemStore(out, "lens", "k1", overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
