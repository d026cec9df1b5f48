from __future__ import annotations

import json
from pathlib import Path

import pytest

from frankenlab.errors import OutputError
from frankenlab.io.store import JsonlStore, claim_out_dir, marker_key, read_marker

OURS = ("items.jsonl", "table.*", "plots", ".cache")


def _claim(out: Path, key: str | None = "k1", **kw):
    return claim_out_dir(out, what="thing", ours=OURS, marker=".mark.json", key=key, results=("items.jsonl",), **kw)


def _ours(out: Path, key: str | None = "k1") -> None:
    """A finished run of `key` as the analysis would leave it."""
    out.mkdir(exist_ok=True)
    (out / "items.jsonl").write_text('{"key": "a"}\n')
    (out / "table.csv").write_text("x\n1\n")
    (out / "plots").mkdir()
    (out / "plots" / "p.png").write_bytes(b"png")
    (out / ".cache").mkdir()
    (out / ".cache" / "c.jsonl").write_text("{}\n")
    if key is not None:
        (out / ".mark.json").write_text(json.dumps({"key": key}))


# -- claim_out_dir ------------------------------------------------------------------------------
def test_missing_and_empty_directories_are_fresh_and_nothing_is_created(tmp_path):
    claim = _claim(tmp_path / "new")
    assert claim.previous is None and not claim.current and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    claim = _claim(tmp_path / "empty")
    assert claim.previous is None and not claim.current


def test_same_key_resumes_and_keeps_everything(tmp_path):
    out = tmp_path / "o"
    _ours(out)
    claim = _claim(out, overwrite=True)  # overwrite replaces other settings only: the same key is kept
    assert claim.current and claim.previous == {"key": "k1"}
    assert sorted(p.name for p in out.iterdir()) == [".cache", ".mark.json", "items.jsonl", "plots", "table.csv"]


def test_other_key_is_refused_then_overwrite_clears_ours_only(tmp_path):
    out = tmp_path / "o"
    _ours(out)
    (out / ".git").mkdir()  # a hidden entry that is not ours is never removed
    with pytest.raises(OutputError, match=r"holds thing results computed with other inputs or settings; pass "
                                          r"--overwrite"):
        _claim(out, key="k2")
    assert (out / "items.jsonl").exists() and (out / ".mark.json").exists()
    claim = _claim(out, key="k2", overwrite=True, keep=(".cache",))
    assert claim.previous is None and not claim.current
    assert sorted(p.name for p in out.iterdir()) == [".cache", ".git"]


def test_results_without_a_marker_count_as_other_settings(tmp_path):
    out = tmp_path / "o"
    _ours(out, key=None)
    with pytest.raises(OutputError, match="other inputs or settings"):
        _claim(out)
    (out / "items.jsonl").unlink()  # only tables and caches left (an interrupted final write): resumable
    assert _claim(out).previous is None


def test_unreadable_marker_matches_no_key(tmp_path):
    out = tmp_path / "o"
    _ours(out)
    (out / ".mark.json").write_text("{torn")
    assert read_marker(out / ".mark.json") == {} and marker_key(out / ".mark.json") is None
    with pytest.raises(OutputError, match="other inputs or settings"):
        _claim(out)


def test_foreign_files_are_refused_with_their_names_and_left_alone(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "table.csv").write_text("ours")
    (out / ".DS_Store").write_text("hidden files never count")
    for name in ("notes.txt", "b.bin", "c", "d", "e", "f", "g"):
        (out / name).write_text("mine")
    with pytest.raises(OutputError) as exc:
        _claim(out, overwrite=True)
    assert str(exc.value) == (f"{out} holds files that are not this thing's output (b.bin, c, d, e, f and 2 more); "
                              "choose a new or empty directory.")
    assert len(list(out.iterdir())) == 9


def test_a_marked_directory_is_ours_whatever_else_it_holds(tmp_path):
    out = tmp_path / "o"
    _ours(out)
    (out / "notes.txt").write_text("the user's, beside our output")
    assert _claim(out).current
    _claim(out, key="k2", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_without_a_key_the_caller_compares_and_overwrite_starts_again(tmp_path):
    out = tmp_path / "o"
    _ours(out, key="whatever")
    claim = _claim(out, key=None)
    assert claim.previous == {"key": "whatever"} and not claim.current
    assert (out / "items.jsonl").exists()
    assert _claim(out, key=None, overwrite=True).previous is None
    assert list(out.iterdir()) == []


def test_a_file_is_not_a_directory(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(OutputError, match=r"is a file; --out must be a directory \(new, empty, or an earlier thing"):
        _claim(f)
    assert f.read_text() == "x"


# -- JsonlStore ---------------------------------------------------------------------------------
def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_records_are_appended_durably_and_read_back_in_order(tmp_path):
    p = tmp_path / "sub" / "items.jsonl"
    store = JsonlStore(p)
    assert len(store) == 0 and not p.exists()
    store.append([{"key": "b", "v": 1}, {"key": "a", "v": "ü"}])
    store.append([{"key": 3, "v": None}])
    assert "ü" in p.read_text(encoding="utf-8")  # UTF-8, not \\u escapes
    again = JsonlStore(p)
    assert [r["key"] for r in again] == ["b", "a", 3] and "3" in again and again.get("a") == {"key": "a", "v": "ü"}


def test_a_key_is_written_once(tmp_path):
    p = tmp_path / "items.jsonl"
    store = JsonlStore(p, key=lambda r: (r["m"], r["i"]))
    store.append([{"m": "x", "i": 1}])
    before = p.read_text()
    with pytest.raises(OutputError, match=r"record \('x', 1\) is already in"):
        store.append([{"m": "x", "i": 2}, {"m": "x", "i": 1}])
    with pytest.raises(OutputError, match="already in"):
        store.append([{"m": "y", "i": 1}, {"m": "y", "i": 1}])
    assert p.read_text() == before and len(store) == 1  # nothing of a refused batch is written


def test_torn_last_line_is_dropped_and_the_next_append_gets_its_own_line(tmp_path):
    p = tmp_path / "items.jsonl"
    good = '{"key": "a"}\n{"key": "b"}\n'
    p.write_text(good + '{"key": "c", "v": [1, 2')  # killed mid-write: no closing bracket, no newline
    store = JsonlStore(p)
    assert [r["key"] for r in store] == ["a", "b"]
    assert p.read_text() == good  # the file was cut back to its good lines
    store.append([{"key": "c"}])
    assert [r["key"] for r in _lines(p)] == ["a", "b", "c"]


def test_torn_utf8_sequence_on_the_last_line_is_a_torn_line(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_bytes(b'{"key": "a"}\n' + '{"key": "b", "v": "ä'.encode()[:-1])  # cut inside the two-byte "ä"
    assert [r["key"] for r in JsonlStore(p)] == ["a"]
    assert p.read_bytes() == b'{"key": "a"}\n'


def test_a_malformed_line_that_is_not_the_last_is_an_error(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"key": "a"}\n{broken\n{"key": "b"}\n')
    with pytest.raises(OutputError, match=r"items.jsonl, line 2: not valid JSON .*delete the file \(or pass "
                                          r"--overwrite\) to start over"):
        JsonlStore(p)
    p.write_text('{"key": "a"}\n{"nokey": 1}\n')
    with pytest.raises(OutputError, match="line 2: a record without its key"):
        JsonlStore(p)


def test_failed_records_are_retried_and_duplicates_keep_the_first(tmp_path):
    p = tmp_path / "items.jsonl"
    rows = [{"key": "a", "status": "ok", "n": 1}, {"key": "b", "status": "failed"},
            {"key": "a", "status": "ok", "n": 2}, {"key": "c", "status": "ok"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = JsonlStore(p, retry=lambda r: r["status"] != "ok")
    assert [(r["key"], r.get("n")) for r in store] == [("a", 1), ("c", None)] and "b" not in store
    assert [r["key"] for r in _lines(p)] == ["a", "c"]
    store.append([{"key": "b", "status": "ok"}])
    assert [r["key"] for r in JsonlStore(p)] == ["a", "c", "b"]


def test_a_clean_file_is_not_rewritten_on_open(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"key": "a", "x": 1.0}\n')  # not how we would serialize it: kept byte for byte
    stamp = p.stat().st_mtime_ns
    JsonlStore(p, retry=lambda r: False)
    assert p.read_text() == '{"key": "a", "x": 1.0}\n' and p.stat().st_mtime_ns == stamp


def test_drop_and_overwrite(tmp_path):
    p = tmp_path / "items.jsonl"
    store = JsonlStore(p)
    store.append([{"key": k} for k in "abc"])
    store.drop(["b", "zzz"])
    assert [r["key"] for r in store] == ["a", "c"] and [r["key"] for r in _lines(p)] == ["a", "c"]
    fresh = JsonlStore(p, overwrite=True)
    assert len(fresh) == 0 and not p.exists()
