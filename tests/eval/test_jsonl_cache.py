"""The endpoint cache: durable puts, replacement, a torn last line recomputed, in-memory without a path."""

from __future__ import annotations

from frankenlab.eval.endpoint import JsonlCache


def test_cache_survives_reopen_replacement_and_a_torn_line(tmp_path):
    path = tmp_path / "c.jsonl"
    c = JsonlCache(path)
    c.put("a", {"text": "x"})
    c.put("b", [1, 2])
    c.put("a", "replaced")
    again = JsonlCache(path)
    assert (again.get("a"), again.get("b"), len(again)) == ("replaced", [1, 2], 2)
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"key": "c", "val')  # killed mid-write
    torn = JsonlCache(path)
    assert "c" not in torn and len(torn) == 2
    torn.put("c", 3)
    assert JsonlCache(path).get("c") == 3
    mem = JsonlCache(None)
    mem.put("k", 1)
    assert mem.get("k") == 1 and len(mem) == 1
