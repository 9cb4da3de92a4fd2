"""Smaller micro-batches with gradient accumulation, for an unmodified script.

Each batch of a training DataLoader is split, in order, into up to ``k`` micro-batches (``MicroBatchSampler``
wraps the loader's own batch sampler, so the sampler's shuffling and RNG use are untouched). While micro-batches
of one batch flow through the script's loop, the ``Accumulator`` makes every micro-batch's loss count for its
share of the batch (the backward gradient is scaled by micro size / batch size) and lets ``optimizer.step``,
``zero_grad``, LR-scheduler steps, GradScaler steps and gradient clipping act only once per batch. The
optimizer steps, the data and their order are the same as with the full batch.

``LoaderWatch`` numbers the script's DataLoaders in creation order and notes which of them feed a backward pass
(training loaders), so the supervisor knows what it can split in the next attempt. It also keeps the script's
``LoopPosition`` (passes and batches), and lets run checkpoints act at the top of the loop (``before_next``) and a
resumed run position a pass (``open_pass``).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

from torchdoctor.agent.hooks.loop_position import Iteration, LoopPosition
from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.agent.recovery.accumulation import Accumulator, MicroInfo
from torchdoctor.events import BatchSource


def split_sizes(n: int, parts: int, size: int | None = None) -> list[int]:
    """Sizes of contiguous chunks of ``n`` items: ``parts`` (at most ``n``) as even as possible, or, with ``size``,
    chunks of ``size`` items and the rest last (the largest micro-batch that fits, as often as it fits)."""
    if size:
        full, rest = divmod(n, size)
        return [size] * full + ([rest] if rest else []) or [0]
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def whole_batches(loader: DataLoader) -> int | None:
    """Batches in one pass over ``loader`` as the script asked for them (before any split); None if unknown."""
    sampler: Any = loader.batch_sampler  # the script's own: perhaps without a length (the TypeError below)
    if isinstance(sampler, MicroBatchSampler):
        sampler = sampler.inner
    try:
        return len(sampler) if sampler is not None else len(loader)
    except TypeError:  # an iterable dataset without a length
        return None


class MicroBatchSampler:
    """Yields each batch of ``inner`` as consecutive micro-batches; records their order for the Accumulator."""

    def __init__(self, inner: Any, parts: int, gated: bool = True, size: int | None = None) -> None:
        self.inner = inner
        self.parts = parts
        self.size = size
        self.gated = gated  # torchdoctor accumulates its micro-batches (else the script or nobody does)
        self.pending: deque[MicroInfo] = deque()

    def __iter__(self) -> Iterator[list[Any]]:
        self.pending.clear()  # a new pass over the data
        for batch in self.inner:
            batch = list(batch)
            start = 0
            sizes = split_sizes(len(batch), self.parts, self.size) if batch else [0]
            for i, size in enumerate(sizes):
                self.pending.append(MicroInfo(i, len(sizes), size / max(1, len(batch))))
                yield batch[start:start + size]
                start += size

    def __len__(self) -> int:
        inner_len = len(self.inner)
        sampler = getattr(self.inner, "sampler", None)
        batch_size = getattr(self.inner, "batch_size", None)
        if sampler is None or not batch_size:
            return inner_len * self.parts
        try:
            n = len(sampler)
        except TypeError:
            return inner_len * self.parts
        full, last = divmod(n, batch_size)
        tail = 0 if getattr(self.inner, "drop_last", False) or not last else len(split_sizes(last, self.parts,
                                                                                              self.size))
        return full * len(split_sizes(batch_size, self.parts, self.size)) + tail


class LoaderWatch:
    """Numbers DataLoaders, reports batch sources, and splits the ones the plan names."""

    def __init__(self, emit: Callable[[Any], None], split: dict[int, int], worker_cap: int | None,
                 keep_rng: bool = False, gated: set[int] | None = None, sizes: dict[int, int] | None = None) -> None:
        self._emit = emit
        self._split = split  # loader index -> micro-batches per batch
        self._gated = gated if gated is not None else set(split)  # ... whose micro-batches torchdoctor accumulates
        self._micro_sizes = sizes or {}  # ... split into micro-batches of this size (else evenly)
        self._worker_cap = worker_cap
        self._count = 0
        self._sizes: dict[int, int | None] = {}
        self._workers: dict[int, int] = {}
        self._training: set[int] = set()
        self.last_loader: int | None = None
        self.accumulator = Accumulator()
        self.split_loaders: list[int] = []
        self.position = LoopPosition(keep_rng)
        # Called with the iterator before each batch is fetched (the top of the script's loop).
        self.before_next: Callable[[Any], None] | None = None
        # Called as open_pass(loader, record, make_iterator) to make a pass's iterator (a resumed run positions it).
        self.open_pass: Callable[[DataLoader, Iteration, Callable[[], Any]], Any] | None = None
        # Called as listener(record, training) when a pass over a DataLoader starts (the doctor).
        self.pass_listeners: list[Callable[[Iteration, bool], None]] = []
        # Called as on_batch(loader index, batch) for each batch the script gets (the training ledger).
        self.on_batch: Callable[[int | None, Any], None] | None = None
        self.batches_delivered = 0  # every batch of every DataLoader
        self.last_micro: MicroInfo | None = None  # the micro-batch just delivered (None: a whole batch)
        self.fetching: int | None = None  # the DataLoader making a batch now (its sampler, dataset, collate)
        self.failed_fetch: int | None = None  # the DataLoader whose batch-making raised
        self._fetch: Callable[[Any], Any] = _BaseDataLoaderIter.__next__
        self._patches = ClassPatches()

    def install(self) -> None:
        watch = self

        def init_wrapper(original: Any) -> Any:
            @functools.wraps(original)
            def __init__(loader: DataLoader, *args: Any, **kwargs: Any) -> None:
                if watch._worker_cap is not None and kwargs.get("num_workers", 0) > watch._worker_cap:
                    kwargs["num_workers"] = watch._worker_cap
                    if watch._worker_cap == 0:
                        kwargs.pop("prefetch_factor", None)
                        kwargs["persistent_workers"] = False
                original(loader, *args, **kwargs)
                watch._adopt(loader)
            return __init__

        def iter_init_wrapper(original: Any) -> Any:
            @functools.wraps(original)
            def __init__(it: Any, loader: DataLoader, *args: Any, **kwargs: Any) -> None:
                original(it, loader, *args, **kwargs)
                it._torchdoctor_index = getattr(loader, "_torchdoctor_index", None)
            return __init__

        def iter_wrapper(original: Any) -> Any:
            @functools.wraps(original)
            def __iter__(loader: DataLoader) -> Any:
                index = getattr(loader, "_torchdoctor_index", None)
                if index is None:
                    return original(loader)
                record = watch.position.started(index, loader)
                record.length = whole_batches(loader)
                for listener in watch.pass_listeners:
                    listener(record, index in watch._training)
                if watch.open_pass is not None:
                    it = watch.open_pass(loader, record, lambda: original(loader))
                else:
                    it = original(loader)
                if isinstance(it, _BaseDataLoaderIter):
                    it._torchdoctor_pass = record  # type: ignore[attr-defined]  # our tag on torch's iterator
                return it
            return __iter__

        def next_wrapper(original: Any) -> Any:
            watch._fetch = original

            @functools.wraps(original)
            def __next__(it: Any) -> Any:
                if watch.before_next is not None:
                    watch.before_next(it)
                watch.fetching = getattr(it, "_torchdoctor_index", None)
                try:
                    data = original(it)
                except StopIteration:
                    record = getattr(it, "_torchdoctor_pass", None)
                    if record is not None:
                        record.exhausted = True
                    raise
                except BaseException:
                    watch.failed_fetch = watch.fetching  # the script died making a batch (an OOM in collate)
                    raise
                finally:
                    watch.fetching = None
                watch._delivered(it)
                if watch.on_batch is not None:
                    watch.on_batch(watch.last_loader, data)
                return data
            return __next__

        self._patches.wrap(DataLoader, "__init__", init_wrapper)
        self._patches.wrap(_BaseDataLoaderIter, "__init__", iter_init_wrapper)
        self._patches.wrap(DataLoader, "__iter__", iter_wrapper)
        self._patches.wrap(_BaseDataLoaderIter, "__next__", next_wrapper)

    def remove(self) -> None:
        self._patches.restore()

    def _adopt(self, loader: DataLoader) -> None:
        index = self._count
        self._count += 1
        loader._torchdoctor_index = index
        self._sizes[index] = loader.batch_size
        self._workers[index] = loader.num_workers
        parts = self._split.get(index, 1)
        detail = ""
        if parts > 1:
            if loader.batch_sampler is None:
                detail = "no batch sampler (batch_size=None): cannot split"
            else:
                size = self._micro_sizes.get(index)
                object.__setattr__(loader, "batch_sampler", MicroBatchSampler(
                    loader.batch_sampler, parts, gated=index in self._gated, size=size))
                self.split_loaders.append(index)
                detail = (f"split into micro-batches of {size}" if size else
                          f"split into {parts} micro-batches per batch")
        self._emit(BatchSource(index=index, source="dataloader", batch_size=loader.batch_size, training=False,
                               detail=detail, workers=loader.num_workers))

    def _delivered(self, iterator: Any) -> None:
        self.batches_delivered += 1
        self.last_loader = getattr(iterator, "_torchdoctor_index", None)
        sampler = getattr(iterator, "_index_sampler", None)
        whole = True
        self.last_micro = None
        if isinstance(sampler, MicroBatchSampler) and sampler.pending:
            current = self.last_micro = sampler.pending.popleft()
            whole = current.index == 0
            if sampler.gated:
                self.accumulator.current = current
        elif self.last_loader is not None and self.last_loader in self._training:
            self.accumulator.current = None
        self.position.delivered(getattr(iterator, "_torchdoctor_pass", None), whole)

    def skip(self, iterator: Any, record: Iteration, batches: int) -> None:
        """Fetch and drop ``batches`` whole batches (all their micro-batches) from a new pass's ``iterator``.

        They are loaded for real, not skipped in the sampler: DataLoader workers draw random augmentation from
        their own RNG, so each worker must see the same indices in the same order as in the first run."""
        iterator._torchdoctor_pass = record
        while record.batches < batches or (self.last_micro is not None and not self.last_micro.last):
            self._fetch(iterator)
            self._delivered(iterator)

    @property
    def training_loaders(self) -> set[int]:
        return set(self._training)

    def batch_size(self, index: int) -> int | None:
        return self._sizes.get(index)

    def training_passes(self) -> list[dict[str, Any]]:
        """The passes over DataLoaders that fed backward passes, and how each ended."""
        out = []
        for record in self.position.passes:
            if record.loader in self._training and (record.batches or record.steps):
                out.append({"loader": record.loader, "number": record.number, "batches": record.batches,
                            "steps": record.steps, "exhausted": record.exhausted, "length": record.length})
        return out

    def note_backward(self) -> None:
        index = self.last_loader
        if index is not None and index not in self._training:
            self._training.add(index)
            self._emit(BatchSource(index=index, source="dataloader", batch_size=self._sizes.get(index),
                                   training=True, workers=self._workers.get(index, 0)))
