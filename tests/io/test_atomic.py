from __future__ import annotations

import pandas as pd
import pytest

from frankenlab.errors import OutputError
from frankenlab.io import atomic_dir, atomic_file, write_json, write_table


def test_atomic_file_replaces_only_on_success(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(p) as fh:
        fh.write("new")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert list(tmp_path.iterdir()) == [p]
    write_json(p, {"a": 1})
    assert p.read_text().strip().startswith("{")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError), atomic_dir(out) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise ValueError("fail mid-write")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_disk_full_becomes_output_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="nothing was left behind"), atomic_dir(out) as tmp:
        (tmp / "a").write_bytes(b"x")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("1")
    with pytest.raises(OutputError, match="--overwrite"), atomic_dir(out):
        pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_table_orders_columns_and_writes_both(tmp_path):
    df = pd.DataFrame({"b": [1, 2], "a": [3, 4], "z": [5, 6]})
    write_table(df, tmp_path / "t", columns=["a", "b"])
    csv = pd.read_csv(tmp_path / "t.csv")
    pq = pd.read_parquet(tmp_path / "t.parquet")
    assert list(csv.columns) == ["a", "b", "z"] == list(pq.columns)
    assert csv["a"].tolist() == [3, 4]


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        p = write_json(tmp_path / "m.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
