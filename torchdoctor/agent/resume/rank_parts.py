"""Each rank's part of a run checkpoint under torch's launcher (``torchdoctor run --nproc-per-node N
--checkpoint-every K``).

Global rank 0 writes the checkpoint itself (the models, optimizers, schedulers and scalers: under data parallelism
every rank holds the same), and every other rank, at the same point of its loop, only what is its own: its RNG
states, the RNG at the start of its loader pass and its loader's and sampler's generators, and a fingerprint of its
training state; after its next step, that step's record (learning rates, backward passes, its own losses). No rank
waits for another (no collective, no barrier): a dead peer cannot hang a checkpoint.

A relaunch loads rank 0's checkpoint in every rank and each rank's own part on top of it. The supervisor resumes
only from a checkpoint every rank wrote its part of, with the same world size and the same fingerprint in every
rank (the ranks held the same state: not a sharded model, FSDP, or ranks that train differently).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import torch

from torchdoctor.agent.checkpoint import capture_rng
from torchdoctor.files import rank_part_path, write_atomic

FORMAT = "torchdoctor.rank-part"
KEEP = 3  # a rank's newest parts kept: rank 0 keeps two committed checkpoints and may be writing a third


def fingerprint(objects: Any) -> str:
    """A short digest of the training state's values (every module's state and every optimizer's): equal on ranks
    that hold the same tensors (data parallelism keeps them bit-identical), different otherwise. One sum per tensor
    in its own dtype (no copy of any tensor), read back once per device."""
    named: list[tuple[str, Any]] = []
    for key in sorted(objects.modules):
        named += [(f"{key}.{name}", value) for name, value in objects.modules[key].state_dict().items()]
    for i, optimizer in enumerate(objects.optimizers):
        for index, state in sorted(optimizer.state_dict()["state"].items()):
            named += [(f"opt{i}.{index}.{name}", value) for name, value in sorted(state.items())]
    sums: dict[Any, list[torch.Tensor]] = {}
    for _, value in named:
        if isinstance(value, torch.Tensor) and value.numel():
            sums.setdefault(value.device, []).append(value.detach().sum().to(torch.float64))
    read = {device: iter(torch.stack(values).tolist()) for device, values in sums.items()}
    digest = hashlib.sha1()
    for name, value in named:
        if isinstance(value, torch.Tensor):
            total = next(read[value.device]) if value.numel() else 0
            digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}:{total!r};".encode())
        elif value is None or isinstance(value, (bool, int, float, str)):
            digest.update(f"{name}:{value!r};".encode())
    return digest.hexdigest()[:16]


def save_part(directory: str, rank: int, world_size: int, step: int, marker: dict[str, Any],
              epoch_rng: Any, pass_generators: Any) -> str:
    """Write this rank's part of the checkpoint of ``step`` (then its commit marker, ``marker`` added); returns its
    path. Older parts of this rank are pruned (``KEEP`` kept)."""
    path = rank_part_path(directory, rank, step)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    body = {"format": FORMAT, "rank": rank, "world_size": world_size, "step": step, "rng": capture_rng(),
            "epoch_rng": epoch_rng, "pass_generators": pass_generators}
    write_atomic(path, lambda handle: torch.save(body, handle))
    facts = {"format": FORMAT, "file": os.path.basename(path), "rank": rank, "world_size": world_size,
             "step": step, **marker}
    write_atomic(f"{path}.json", lambda handle: handle.write(json.dumps(facts).encode()))
    _prune(folder, rank)
    return path


def load_part(directory: str, rank: int, step: int) -> dict[str, Any]:
    """This rank's part of the checkpoint of ``step`` (its commit marker must exist); raises OSError or ValueError
    with what is wrong."""
    path = rank_part_path(directory, rank, step)
    if not os.path.exists(f"{path}.json"):
        raise ValueError(f"rank {rank} has no part of the checkpoint of step {step} ({path})")
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated zip, pickle errors: not a usable part
        raise ValueError(f"{path} cannot be read ({type(exc).__name__})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("step") != step:
        raise ValueError(f"{path} is not rank {rank}'s part of the checkpoint of step {step}")
    return body


def _prune(folder: str, rank: int) -> None:
    mine = re.compile(rf"^rank{rank}-step(\d{{9}})\.pt$")
    names = os.listdir(folder)
    steps = sorted((int(m.group(1)) for n in names if (m := mine.match(n)) and f"{n}.json" in names), reverse=True)
    if not steps:
        return
    keep = {os.path.basename(rank_part_path(folder, rank, s)) for s in steps[:KEEP]}
    for name in names:
        base = name.split(".pt.", 1)[0] + ".pt" if ".pt." in name else name
        match = mine.match(base)
        if name.startswith(f".rank{rank}-step") and ".tmp-" in name:
            os.unlink(os.path.join(folder, name))  # an interrupted write's temporary
        elif match and base not in keep and int(match.group(1)) < steps[0]:
            os.unlink(os.path.join(folder, name))
