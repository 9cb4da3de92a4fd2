"""GPUs an estimate can target (``torchdoctor estimate --gpu NAME``): each card's memory and compute capability, and
what torch takes on it besides the tensors. Torch-free: the CLI, the supervisor and the agent read it.

The memory figures are nominal: the total ``nvidia-smi`` shows for the card, as commonly reported (MiB), not
measured here. A card's exact figure is what ``torchdoctor env`` prints on it; ``--budget`` takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchdoctor.errors import UsageError

ENV_ESTIMATE_GPU = "TORCHDOCTOR_ESTIMATE_GPU"  # the GPU a fake run models (its table name)
MiB = 1 << 20
# The CUDA context (driver, kernels loaded lazily) is outside torch's allocator: a few hundred MiB, depending on the
# card, driver and libraries. Not measured here: assumed, and said so (--cuda-context sets it).
CONTEXT_ASSUMED = 512 * MiB


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    capability: tuple[int, int]

    @property
    def cublas_workspace_bytes(self) -> int:
        """torch's default cuBLAS workspace per handle and stream (``CUBLAS_WORKSPACE_CONFIG`` unset):
        ``:4096:8`` (32 MiB) on sm90, ``:4096:2:16:8`` (8 MiB + 128 KiB) elsewhere (aten/src/ATen/cuda/
        CublasHandlePool.cpp); cuBLASLt shares it."""
        return 4096 * 8 * 1024 if self.capability == (9, 0) else 4096 * 1024 * 2 + 16 * 1024 * 8


GPUS = (
    Gpu("H200", 143771 * MiB, (9, 0)),
    Gpu("H100-80GB", 81559 * MiB, (9, 0)),
    Gpu("A100-80GB", 81920 * MiB, (8, 0)),
    Gpu("A100-40GB", 40960 * MiB, (8, 0)),
    Gpu("L40S", 46068 * MiB, (8, 9)),
    Gpu("A6000", 49140 * MiB, (8, 6)),
    Gpu("L4", 23034 * MiB, (8, 9)),
    Gpu("A10G", 23028 * MiB, (8, 6)),
    Gpu("A10", 23028 * MiB, (8, 6)),
    Gpu("RTX4090", 24564 * MiB, (8, 9)),
    Gpu("RTX3090", 24576 * MiB, (8, 6)),
    Gpu("V100-32GB", 32768 * MiB, (7, 0)),
    Gpu("V100-16GB", 16384 * MiB, (7, 0)),
    Gpu("T4", 15360 * MiB, (7, 5)),
)


def _plain(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_gpu(name: str) -> Gpu:
    """The table's GPU for ``name`` (case, spaces and dashes ignored: ``h100-80gb``, ``rtx 4090``, ``a100``);
    one line naming the known ones when it is not there or is ambiguous."""
    wanted = _plain(name)
    exact = [gpu for gpu in GPUS if _plain(gpu.name) == wanted]
    found = exact or [gpu for gpu in GPUS if wanted and _plain(gpu.name).startswith(wanted)]
    if len(found) == 1:
        return found[0]
    known = ", ".join(gpu.name for gpu in GPUS)
    if found:
        raise UsageError(f"--gpu {name!r} matches {', '.join(g.name for g in found)}: name one (known: {known})")
    raise UsageError(f"--gpu {name!r} is not a GPU torchdoctor knows (known: {known}); --budget SIZE takes any "
                     f"card's memory")
