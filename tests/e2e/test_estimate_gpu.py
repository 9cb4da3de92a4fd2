"""``torchdoctor estimate --gpu NAME`` on this CPU-only machine: a script written for CUDA (hard-coded
``torch.device("cuda")``, ``.cuda()``, ``Module.to``, GradScaler and autocast) runs its CUDA path on fake tensors,
and what it puts on the GPU goes through the modelled caching allocator. Checked here against what can be worked
out exactly: each parameter's block is its bytes rounded up to 512, the dataset kept on the host is not on the GPU,
the cuBLAS workspaces are torch's defaults for the card, the breakdown adds up to the allocated peak, and reserved
is whole segments. (Agreement with a real GPU's ``max_memory_allocated/reserved`` needs a GPU: docs/estimate.md.)"""

import json

import pytest

from tests.conftest import run_torchdoctor

pytestmark = pytest.mark.e2e

CUDA_SCRIPT = """
import argparse
import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--amp", action="store_true")
args = parser.parse_args()
device = torch.device("cuda")
data = torch.randn(2048, 1000)  # the dataset stays on the host: 8,192,000 bytes
labels = torch.randint(0, 10, (2048,))
model = nn.Sequential(nn.Linear(1000, 3000), nn.ReLU(), nn.Linear(3000, 10)).to(device)
opt = torch.optim.Adam(model.parameters())
scaler = torch.amp.GradScaler("cuda", enabled=args.amp)
assert torch.cuda.is_available()
for i in range(3):
    x = data[i * args.batch_size:(i + 1) * args.batch_size].to(device, non_blocking=True)
    y = labels[i * args.batch_size:(i + 1) * args.batch_size].cuda()
    with torch.autocast("cuda", dtype=torch.float16, enabled=args.amp):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    with open(f"cuda-stats-{args.batch_size}.txt", "a") as stats:  # what the script reads from torch.cuda
        print(torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated(), torch.cuda.memory_reserved(),
              file=stats)
"""
PARAMS = ((1000 * 3000, 3000), (3000 * 10, 10))  # elements of each layer's weight and bias
MiB = 1 << 20


def block(nbytes):
    """The block a first request of ``nbytes`` gets: rounded up to 512; from a new segment (2 MiB small pool,
    20 MiB up to 10 MiB, else rounded up to 2 MiB), split off unless 1 MiB or less of the segment would remain."""
    size = max(512, -(-nbytes // 512) * 512)
    if size <= MiB:
        return size
    segment = 20 * MiB if size < 10 * MiB else -(-size // (2 * MiB)) * 2 * MiB
    return segment if segment - size <= MiB else size


def _estimate(tmp_path, *args):
    (tmp_path / "cuda_train.py").write_text(CUDA_SCRIPT)
    out = tmp_path / "estimate.json"
    result = run_torchdoctor(["estimate", "--json", str(out), *args, "cuda_train.py"], cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text()), result


def test_a_cuda_script_is_modelled_block_by_block_on_a_cpu_only_machine(tmp_path):
    document, result = _estimate(tmp_path, "--gpu", "A100-40GB", "--batch-sizes", "64,512")
    assert document["gpu"]["name"] == "A100-40GB" and "nominal" in document["gpu"]["memory_source"]
    assert "modelled for A100-40GB" in result.stdout and "no GPU" in result.stdout
    params = sum(block(4 * n) for layer in PARAMS for n in layer)
    assert params == 12_582_912 + 12_288 + 120_320 + 512  # the 12 MB weight takes its whole 12 MiB segment
    workspace = 2 * (4096 * 1024 * 2 + 16 * 1024 * 8)  # sm80: torch's default :4096:2:16:8, forward and backward
    allocated = []
    for estimate in document["estimates"]:
        gpu = estimate["gpu"]
        kinds = gpu["by_kind"]
        assert kinds["parameters"] == params  # each parameter the block the allocator's rules give it
        assert kinds["cublas_workspace"] == workspace
        assert sum(kinds.values()) == gpu["allocated_peak_bytes"]  # the breakdown adds up
        assert kinds["inputs_data"] < 8_192_000  # the host's dataset is not on the GPU (only the moved batch)
        assert gpu["reserved_peak_bytes"] >= gpu["allocated_peak_bytes"] and gpu["reserved_peak_bytes"] % (2 * MiB) == 0
        assert gpu["total_bytes"] == gpu["reserved_peak_bytes"] + 512 * MiB  # the assumed context, said
        assert estimate["peak_bytes"] > 8_192_000  # the host-and-GPU count holds the dataset
        allocated.append(gpu["allocated_peak_bytes"])
        # the script's own torch.cuda reads after its first step (the estimate stops it at its second): a peak
        # above what is held, within the estimate's, and the reserved memory the estimate gives
        now, peak, reserved = map(int, (tmp_path / f"cuda-stats-{estimate['batch_size']}.txt").read_text().split())
        assert now < peak <= gpu["allocated_peak_bytes"] and reserved <= gpu["reserved_peak_bytes"]
    assert allocated[1] > allocated[0]


def test_autocast_and_gradscaler_run_and_the_largest_batch_is_bounded_by_the_data(tmp_path):
    document, result = _estimate(tmp_path, "--gpu", "H100-80GB", "--batch-sizes", "64", "--cuda-context", "400MiB")
    gpu = document["estimates"][0]["gpu"]
    assert gpu["by_kind"]["cublas_workspace"] == 2 * 32 * MiB  # sm90: :4096:8
    assert gpu["context_bytes"] == 400 * MiB and document["estimates"][0]["steps_counted"] == 2
    largest = document["largest_batch"]  # 80 GB holds any batch this script makes: its 2048 samples bound it
    assert largest["limited_by"] == "data" and largest["batch_size"] == 2048
    assert largest["first_over"]["batch_seen"] == 2048 and "bounded by the script's data" in result.stdout
    (tmp_path / "amp").mkdir()
    amp = run_torchdoctor(["estimate", "--gpu", "T4", "--batch-sizes", "64", "--json", "amp.json", "../cuda_train.py",
                           "--amp"], cwd=tmp_path / "amp", timeout=240)
    assert amp.returncode == 0, amp.stderr[-2000:]  # GradScaler stepped (its found-inf flags read as 0)
    autocast = json.loads((tmp_path / "amp" / "amp.json").read_text())["estimates"][0]
    assert autocast["steps_counted"] == 2 and autocast["gpu"]["by_kind"]["cublas_workspace"] == 2 * (8 * MiB + (128 << 10))
