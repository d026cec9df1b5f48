"""Pass 1 fed from a background reader: the stored bytes of upcoming tensors, block by block.

On a cold cache `compare --svd none` is a race between the disk and the fused kernel. Reading
through the page cache costs nearly a core on a small VM (see :mod:`frankenlab.checkpoint.direct`),
and that core is the one the kernel needs. Here one thread reads the next blocks of both
checkpoints with O_DIRECT into a few reused, aligned buffers while the kernel consumes the
current ones: the disk never waits on the kernel, the kernel never waits on the page cache, and
resident memory stays at `depth` block pairs whatever the tensor size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from frankenlab.checkpoint.direct import ALIGN, ByteRange, RangeReader, aligned_buffer
from frankenlab.compare import fused
from frankenlab.errors import CompareError

log = logging.getLogger(__name__)

__all__ = ["BLOCK_ENTRIES", "BlockStream", "StreamedTensor"]

BLOCK_ENTRIES = 512 * fused.CHUNK  # 8 M entries: 16 MB of bf16 per checkpoint and read
ITEMSIZE = {dtype: np.dtype(bits).itemsize for dtype, (bits, _) in fused.STORED.items()}  # what can stream
_END = object()


@dataclass(frozen=True)
class StreamedTensor:
    """One tensor to stream: its element count and, per role ('in', 'rl'), where and how it is stored."""

    canonical: str
    numel: int
    ranges: dict[str, tuple[ByteRange, str]]  # role → (bytes, safetensors dtype)


Block = dict[str, tuple[np.ndarray, int]]  # role → (stored bits, widening shift)


class BlockStream:
    """Reads `items` in order on one background thread; :meth:`blocks` hands them out in the same order.

    Blocks hold whole :data:`fused.CHUNK`s, so fused statistics over them equal one call on the
    whole tensor bit for bit. A read error reaches the consumer as the error of that tensor.
    """

    def __init__(self, items: list[StreamedTensor], *, block_entries: int = BLOCK_ENTRIES, depth: int = 3,
                 direct: bool = True) -> None:
        if block_entries <= 0 or block_entries % fused.CHUNK:
            raise ValueError(f"block_entries must be a positive multiple of {fused.CHUNK}")
        self.items = items
        self._block = block_entries
        self._reader = RangeReader(direct=direct)
        self._stop = threading.Event()
        self._free: queue.Queue[dict[str, object]] = queue.Queue()
        self._ready: queue.Queue[object] = queue.Queue()
        size = block_entries * max(ITEMSIZE.values()) + 2 * ALIGN
        for _ in range(depth):
            self._free.put({role: aligned_buffer(size) for role in ("in", "rl")})
        self._next = 0
        self._thread = threading.Thread(target=self._produce, name="frankenlab-blocks", daemon=True)
        self._thread.start()

    @property
    def direct_bytes(self) -> int:
        return self._reader.direct_bytes

    @property
    def buffered_bytes(self) -> int:
        return self._reader.buffered_bytes

    def _take_free(self) -> dict[str, object] | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _produce(self) -> None:
        try:
            for item in self.items:
                for lo in range(0, item.numel, self._block):
                    hi = min(item.numel, lo + self._block)
                    bufs = self._take_free()
                    if bufs is None:
                        return
                    block: Block = {}
                    for role, (rng, dtype) in item.ranges.items():
                        size = ITEMSIZE[dtype]
                        view = self._reader.read(rng, lo * size, hi * size, bufs[role])  # type: ignore[arg-type]
                        block[role] = fused.raw_bits(view, dtype)
                    self._ready.put((item.canonical, hi, block, bufs))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            self._ready.put(exc)
        finally:
            self._ready.put(_END)

    def blocks(self, canonical: str) -> Iterator[Block]:
        """The blocks of the next streamed tensor, which must be `canonical` (the walk's order)."""
        if self._next >= len(self.items) or self.items[self._next].canonical != canonical:
            expected = self.items[self._next].canonical if self._next < len(self.items) else "nothing"
            raise CompareError(f"internal: block stream expected {expected}, asked for {canonical}")
        item = self.items[self._next]
        self._next += 1
        done = 0
        while done < item.numel:
            got = self._ready.get()
            if got is _END:
                raise CompareError(f"internal: block stream ended before {canonical} was read")
            if isinstance(got, BaseException):
                raise got
            name, hi, block, bufs = got  # type: ignore[misc]
            if name != canonical:
                raise CompareError(f"internal: block stream delivered {name} while {canonical} was read")
            yield block
            del block
            done = hi
            self._free.put(bufs)

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting for a buffer; drop what it read
                got = self._ready.get(timeout=0.1)
                if isinstance(got, tuple):
                    self._free.put(got[3])
            except queue.Empty:
                pass
        self._thread.join()
        self._reader.close()
        log.debug("block stream: %d bytes read directly, %d through the page cache", self.direct_bytes,
                  self.buffered_bytes)
