"""Atomic, exact-resume checkpoints.

    path = torchdoctor.save_checkpoint("ckpt", model=model, optimizer=opt, scheduler=sched, epoch=2, step=340,
                                       loss=loss.item(), epoch_rng=rng_at_epoch_start, batch_index=17)
    ckpt = torchdoctor.load_checkpoint("ckpt", model=model, optimizer=opt, scheduler=sched)

Each checkpoint is a plain dict (``epoch``, ``model_state_dict``, ``optimizer_state_dict``, ``loss`` as PyTorch
users know them, plus scheduler, GradScaler, RNG states, step, data position and torchdoctor's plan) that
``torch.load(file)`` reads with the default ``weights_only=True``.

Saving never destroys the previous checkpoint: the file is written under a temporary name in the same directory,
flushed and fsynced, renamed into place, the directory fsynced, and only then is its commit marker (a JSON file
with size and SHA-256) written the same way; older checkpoints are pruned after that, keeping at least two.
Loading walks from the newest committed checkpoint to the oldest and takes the first that validates. Stray
temporaries of interrupted saves are removed by the next successful save.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from torchdoctor.errors import TorchDoctorError
from torchdoctor.files import (
    CHECKPOINT_NAME,
    CheckpointDamaged,
    committed,
    fsync_dir,
    verify_checkpoint,
    write_atomic,
)

FORMAT = "torchdoctor.checkpoint"
FORMAT_VERSION = 1
_NAME = CHECKPOINT_NAME


class CheckpointError(TorchDoctorError):
    """A checkpoint cannot be written or does not fit what it is loaded into (one line, names the file)."""

    exit_code = 2


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` found: the loaded dict and where it came from."""

    path: str
    data: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that did not validate, and why

    @property
    def epoch(self) -> int | None:
        return self.data.get("epoch")

    @property
    def step(self) -> int | None:
        return self.data.get("step")

    @property
    def batch_index(self) -> int | None:
        return (self.data.get("data_position") or {}).get("batch_index")


# -- RNG ------------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Every RNG a training step draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        legacy = np.random.get_state(legacy=True)  # the default, spelled out: numpy's stub types a bare call a dict
        assert isinstance(legacy, tuple)  # the global RandomState is an MT19937's: its state is the legacy tuple
        kind, keys, pos, has_gauss, gauss = legacy
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files ----------------------------------------------------------------------------------------------
class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (torch.save needs only ``write``), so the commit
    marker's SHA-256 costs no second read of the file."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


def _next_path(directory: str) -> str:
    numbers = [int(m.group(1)) for n in os.listdir(directory) if (m := _NAME.match(n))]
    return os.path.join(directory, f"ckpt-{max(numbers, default=0) + 1:09d}.pt")


def _world_size() -> int:
    """The process group's size; before the group is made (a relaunch loads its checkpoint when the script imports
    torch), the world size torch's launcher set; 1 outside it."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def save_checkpoint(directory: str, *, model: torch.nn.Module | None = None, optimizer: Any = None,
                    scheduler: Any = None, scaler: Any = None, epoch: int | None = None, step: int | None = None,
                    loss: float | None = None, epoch_rng: dict[str, Any] | None = None,
                    batch_index: int | None = None, plan: dict[str, Any] | None = None, keep: int = 2,
                    marker: dict[str, Any] | None = None, **extra: Any) -> str:
    """Write a new checkpoint into ``directory`` atomically; returns its path. ``keep`` (at least 2) are kept.

    ``marker`` adds JSON-ready facts to the commit marker, for readers that must not load the file (the
    supervisor, which does not import torch)."""
    if keep < 2:
        raise CheckpointError("keep must be at least 2: the newest checkpoint must never be the only one")
    try:
        os.makedirs(directory, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-")  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoints to {directory}: {exc.strerror or exc}") from None
    data: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "epoch": epoch, "step": step,
                            "loss": float(loss) if loss is not None else None, "world_size": _world_size(),
                            "rng": capture_rng(), "epoch_rng": epoch_rng,
                            "data_position": {"epoch": epoch, "batch_index": batch_index}, "plan": plan or {},
                            "torch_version": str(torch.__version__), "extra": extra}
    if model is not None:
        data["model_state_dict"] = model.state_dict()
    if optimizer is not None:
        data["optimizer_state_dict"] = optimizer.state_dict()
    if scheduler is not None:
        data["scheduler_state_dict"] = scheduler.state_dict()
    if scaler is not None:
        data["scaler_state_dict"] = scaler.state_dict()
    path = _next_path(directory)
    hashed: list[_HashingWriter] = []

    def write_data(handle: Any) -> None:
        hashed.append(_HashingWriter(handle))
        torch.save(data, hashed[0])  # type: ignore[arg-type]  # torch.save needs only write (and flush)

    try:
        write_atomic(path, write_data)
        marker = {"format": FORMAT, "file": os.path.basename(path), "size": hashed[0].size,
                  "sha256": hashed[0].digest.hexdigest(), "epoch": epoch, "step": step, **(marker or {})}
        write_atomic(f"{path}.json", lambda handle: handle.write(json.dumps(marker).encode()))
    except (OSError, RuntimeError) as exc:  # a full disk comes as RuntimeError("... unexpected pos ...")
        kept = committed(directory)
        raise CheckpointError(f"could not save {path} ({exc}); the previous checkpoint "
                              f"{kept[0] if kept else '(none)'} is untouched") from None
    _prune(directory, keep)
    return path


def _prune(directory: str, keep: int) -> None:
    valid = committed(directory)
    keep_names = {os.path.basename(p) for p in valid[:keep]}
    newest = os.path.basename(valid[0]) if valid else None
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        base = name.split(".pt.", 1)[0] + ".pt" if ".pt." in name else name  # its .json marker, .next.json, ...
        if ".tmp-" in name or name.startswith(".write-test-"):
            os.unlink(full)  # an interrupted save's temporary
        elif _NAME.match(base) and base not in keep_names and newest is not None and base < newest:
            os.unlink(full)  # older than the kept ones, or an uncommitted leftover of an interrupted save
    fsync_dir(directory)


def _verify(path: str) -> dict[str, Any]:
    try:
        verify_checkpoint(path)
    except CheckpointDamaged as exc:
        raise CheckpointError(str(exc)) from None
    return _read(path)


def _read(path: str) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle errors: all mean "not a usable checkpoint"
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a torchdoctor checkpoint")
    return data


def load_checkpoint(path: str, *, model: torch.nn.Module | None = None, optimizer: Any = None,
                    scheduler: Any = None, scaler: Any = None, restore_rng_state: bool = True,
                    plan: dict[str, Any] | None = None) -> Checkpoint:
    """Load the newest valid checkpoint of a directory (or one file) into the given objects.

    Shapes, world size and (when ``plan`` is given: torchdoctor's batch plan of this run) the effective batch are
    checked first; anything that does not match is a one-line ``CheckpointError`` naming the file, and nothing is
    loaded into the objects.
    """
    if os.path.isdir(path):
        candidates = committed(path)
        if not candidates:
            raise CheckpointError(f"no committed checkpoint in {path}")
    elif os.path.exists(path):
        candidates = [path]
    else:
        raise CheckpointError(f"no checkpoint at {path}")
    skipped: list[str] = []
    for candidate in candidates:
        try:
            data = _verify(candidate) if os.path.exists(f"{candidate}.json") else _read(candidate)
            break
        except (CheckpointError, OSError, ValueError, KeyError) as exc:
            skipped.append(f"{candidate}: {exc}")
    else:
        raise CheckpointError(f"no valid checkpoint in {path}: " + "; ".join(skipped))
    _check_fit(candidate, data, model)
    if plan is not None:
        _check_plan(candidate, data.get("plan") or {}, plan)
    if model is not None:
        model.load_state_dict(data["model_state_dict"])
    for obj, key in ((optimizer, "optimizer_state_dict"), (scheduler, "scheduler_state_dict"),
                     (scaler, "scaler_state_dict")):
        if obj is not None:
            if key not in data:
                raise CheckpointError(f"{candidate} holds no {key.replace('_state_dict', '')} state")
            obj.load_state_dict(data[key])
    if restore_rng_state and data.get("rng"):
        restore_rng(data["rng"])
    return Checkpoint(candidate, data, skipped)


def _check_fit(path: str, data: dict[str, Any], model: torch.nn.Module | None) -> None:
    world = _world_size()
    if data.get("world_size", 1) != world:
        raise CheckpointError(f"{path} was written by {data.get('world_size')} processes; this run has {world}")
    if model is None:
        return
    saved = data.get("model_state_dict")
    if saved is None:
        raise CheckpointError(f"{path} holds no model state")
    current = model.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        raise CheckpointError(f"{path} is from another model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, tensor in current.items():
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path} does not fit the model: {key} is {tuple(saved[key].shape)} in the "
                                  f"checkpoint and {tuple(tensor.shape)} in the model")


def _effective_batch_change(plan: dict[str, Any]) -> int:
    """How many times smaller than the script's own the effective batch of a plan is (1: unchanged)."""
    parts = int(plan.get("micro_batches") or 1)
    return 1 if plan.get("keep_effective_batch", True) else parts


def _check_plan(path: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    before, now = _effective_batch_change(saved), _effective_batch_change(current)
    if before != now:
        def say(n: int) -> str:
            return "the script's own effective batch" if n == 1 else f"an effective batch {n} times smaller"

        raise CheckpointError(f"{path} was trained with {say(before)} and this run uses {say(now)} "
                              f"(--no-keep-effective-batch): resuming would change the training")


def resume_batches(loader: Any, checkpoint: Checkpoint | None) -> Any:
    """Iterate ``loader`` from where ``checkpoint`` left its epoch, bit-exactly.

    The sampler's shuffle and the DataLoader workers' seeds are drawn from torch's RNG when the iterator is
    created, so the RNG is put back to its state at the start of that epoch, the batches already trained on are
    skipped, and then the RNG is put back to its state at the checkpoint (for dropout and the rest).
    """
    if checkpoint is None or checkpoint.data.get("epoch_rng") is None:
        yield from loader
        return
    restore_rng(checkpoint.data["epoch_rng"])
    iterator = iter(loader)
    for _ in range((checkpoint.batch_index or -1) + 1):
        next(iterator)
    restore_rng(checkpoint.data["rng"])
    yield from iterator
