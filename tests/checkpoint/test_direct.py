"""Direct reads return exactly the stored bytes; residency is what the page cache really holds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from frankenlab.checkpoint.direct import ALIGN, ByteRange, RangeReader, aligned_buffer, resident_fraction
from frankenlab.errors import CheckpointError


@pytest.fixture()
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = np.random.default_rng(0).integers(0, 256, size=3 * ALIGN * 64 + 1234, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("direct", [True, False])
def test_reads_exact_bytes_at_unaligned_offsets(blob: tuple[Path, bytes], direct: bool) -> None:
    path, data = blob
    rng = ByteRange(path, 777, len(data) - 777 - 5)  # a "tensor" that starts and ends off any boundary
    reader = RangeReader(direct=direct)
    buf = aligned_buffer(len(data) + 2 * ALIGN)
    try:
        for lo, hi in [(0, rng.nbytes), (1, 2), (ALIGN - 1, 5 * ALIGN + 3), (rng.nbytes - 10, rng.nbytes), (5, 5)]:
            got = bytes(reader.read(rng, lo, hi, buf))
            assert got == data[777 + lo: 777 + hi]
    finally:
        reader.close()
    if not direct:
        assert reader.direct_bytes == 0 and reader.buffered_bytes > 0
    elif hasattr(os, "O_DIRECT"):
        assert reader.direct_bytes + reader.buffered_bytes > rng.nbytes  # one path or the other did the work


def test_out_of_range_and_short_files_are_errors(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    reader = RangeReader()
    buf = aligned_buffer(4 * ALIGN)
    try:
        with pytest.raises(ValueError, match="outside"):
            reader.read(ByteRange(path, 0, 100), 50, 101, buf)
        with pytest.raises(CheckpointError, match="end of file"):  # the header promised more than the file holds
            reader.read(ByteRange(path, len(data) - 10, 100), 0, 100, buf)
        with pytest.raises(ValueError, match="cannot hold"):
            reader.read(ByteRange(path, 0, len(data)), 0, len(data), buf)
    finally:
        reader.close()


def test_a_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    reader = RangeReader()
    with pytest.raises(CheckpointError, match="cannot open"):
        reader.read(ByteRange(tmp_path / "gone", 0, 10), 0, 10, aligned_buffer(ALIGN))


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise to evict pages")
def test_residency_follows_the_page_cache(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    rng = ByteRange(path, 100, len(data) - 200)
    path.read_bytes()
    assert resident_fraction(rng) == pytest.approx(1.0)
    evict(path, 0, 0)  # the whole file
    frac = resident_fraction(rng)
    if frac > 0.5:
        pytest.skip("this file system keeps the pages (tmpfs): residency cannot be lowered here")
    assert frac < 0.1
    path.read_bytes()
    evict(path, len(data) // 2, 0)  # the second half only: about half of the range stays
    assert 0.4 < resident_fraction(rng) < 0.6


def evict(path: Path, offset: int, length: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)  # clean pages leave the cache at once
    finally:
        os.close(fd)
