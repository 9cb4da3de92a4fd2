"""A model of torch's CUDA caching allocator (``c10/cuda/CUDACachingAllocator.cpp``, default settings), replayed
over the allocations and frees a fake run makes: what ``torch.cuda.max_memory_allocated()`` and
``max_memory_reserved()`` would read on a GPU, without one. Pure Python (no torch), so it is unit-tested alone.

The rules, as torch's source states them:
- a request is rounded up to a multiple of 512 bytes (``kMinBlockSize``; 512 at least); a 0-byte request takes
  nothing;
- requests of up to 1 MiB (``kSmallSize``) come from the small pool, larger ones from the large pool;
- a request takes the smallest cached free block of its pool that is large enough (ties: the lowest address);
- when none is, a new segment is reserved (``cudaMalloc``): 2 MiB for the small pool, 20 MiB for requests between
  1 and 10 MiB, otherwise the request rounded up to 2 MiB;
- a block larger than the request is split when what remains is at least 512 bytes (small pool) or more than
  1 MiB (large pool); otherwise the whole block is handed out (and counted as allocated);
- a freed block merges with free neighbours of its segment; segments stay reserved (no ``empty_cache``).

Not modelled: several streams, ``max_split_size_mb``, ``roundup_power2_divisions``, expandable segments, and the
release of cached segments when ``cudaMalloc`` fails (which only matters once the device is full).
"""

from __future__ import annotations

from bisect import bisect_left, insort

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20  # requests up to this size come from the small pool
SMALL_BUFFER = 2 << 20  # a small-pool segment
LARGE_BUFFER = 20 << 20  # the segment for requests between SMALL_SIZE and MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(nbytes: int) -> int:
    return MIN_BLOCK if nbytes < MIN_BLOCK else MIN_BLOCK * ((nbytes + MIN_BLOCK - 1) // MIN_BLOCK)


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * ((size + ROUND_LARGE - 1) // ROUND_LARGE)


class Block:
    __slots__ = ("size", "addr", "small", "prev", "next", "allocated")

    def __init__(self, size: int, addr: int, small: bool) -> None:
        self.size, self.addr, self.small = size, addr, small
        self.prev: Block | None = None
        self.next: Block | None = None
        self.allocated = False

    def key(self) -> tuple[int, int]:
        return (self.size, self.addr)


class CachingAllocatorModel:
    def __init__(self) -> None:
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # (size, addr), sorted, per pool
        self._blocks: dict[int, Block] = {}  # free blocks by address
        self._next_addr = 0
        self.allocated = self.reserved = 0
        self.peak_allocated = self.peak_reserved = 0  # since reset_peaks() (the estimate's span: an optimizer step)
        self.script_peaks = [0, 0]  # allocated, reserved: what the script's torch.cuda.max_memory_*() read
        self.segments = 0

    def malloc(self, nbytes: int) -> Block | None:
        if nbytes <= 0:
            return None
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._free[small]
        index = bisect_left(pool, (size, -1))
        if index < len(pool):
            _, addr = pool.pop(index)
            block = self._blocks.pop(addr)
        else:
            block = Block(segment_size(size), self._next_addr, small)
            self._next_addr += block.size
            self.reserved += block.size
            self.segments += 1
            self.peak_reserved = max(self.peak_reserved, self.reserved)
            self.script_peaks[1] = max(self.script_peaks[1], self.reserved)
        remaining = block.size - size
        if (remaining >= MIN_BLOCK) if small else (remaining > SMALL_SIZE):
            rest = Block(remaining, block.addr + size, small)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._cache(rest)
        block.allocated = True
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.script_peaks[0] = max(self.script_peaks[0], self.allocated)
        return block

    def free(self, block: Block | None) -> None:
        if block is None or not block.allocated:
            return
        block.allocated = False
        self.allocated -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._uncache(neighbour)
                if neighbour is block.prev:
                    block.addr, block.prev = neighbour.addr, neighbour.prev
                    if neighbour.prev is not None:
                        neighbour.prev.next = block
                else:
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
                block.size += neighbour.size
        self._cache(block)

    def reset_peaks(self) -> None:
        """The estimate's peaks start again from what is held now."""
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def reset_script_peaks(self) -> None:
        """The script's ``torch.cuda.reset_peak_memory_stats()``."""
        self.script_peaks = [self.allocated, self.reserved]

    def _cache(self, block: Block) -> None:
        insort(self._free[block.small], block.key())
        self._blocks[block.addr] = block

    def _uncache(self, block: Block) -> None:
        pool = self._free[block.small]
        del pool[bisect_left(pool, block.key())]
        del self._blocks[block.addr]
