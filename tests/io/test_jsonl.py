from __future__ import annotations

import pytest

from frankenlab.errors import EvalError, TaskError
from frankenlab.io.jsonl import iter_jsonl


def test_rows_with_line_numbers_and_errors_naming_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl(p)) == [(1, {"a": 1}), (3, {"a": 2})]
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(TaskError, match="line 2: expected a JSON object, got list"):
        list(iter_jsonl(p, error=TaskError))
    p.write_text('{"a": 1}\n{broken\n')
    with pytest.raises(EvalError, match="line 2: not valid JSON"):
        list(iter_jsonl(p, error=EvalError))
    with pytest.raises(EvalError, match="does not exist"):
        list(iter_jsonl(tmp_path / "missing.jsonl", error=EvalError))


def test_a_torn_last_line_is_reported_not_raised_when_asked(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b": "\xc3\n\n')  # the last object was cut inside a UTF-8 "\xc3\xa4"
    torn: list[int] = []
    assert list(iter_jsonl(p, on_torn=torn.append)) == [(1, {"a": 1}), (2, {"a": 2})] and torn == [3]
    with pytest.raises(EvalError, match=r"line 3: not valid JSON \(not UTF-8\); start over\.$"):
        list(iter_jsonl(p, error=EvalError, fix="start over"))
    p.write_text('{"a": 1}\n{broken\n{"a": 3}\n')  # a bad line with good ones after it was not torn by a crash
    with pytest.raises(EvalError, match="line 2: not valid JSON"):
        list(iter_jsonl(p, error=EvalError, on_torn=torn.append))
    assert torn == [3]
