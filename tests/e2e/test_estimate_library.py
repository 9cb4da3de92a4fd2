"""``torchdoctor.estimate_memory(train, ...)``: the estimate for code that builds its own model and step, run in
the calling process on fake tensors. Checked against ``torchdoctor estimate`` on a script calling the same function
(the same figures, to the byte), and that the process is left as it was (real tensors, ``torch.cuda`` answering
for this machine again)."""

import json

import pytest

from tests.conftest import run_python, run_torchdoctor

pytestmark = pytest.mark.e2e

TRAIN = """
import argparse, json, sys
import torch
from torch import nn

import torchdoctor


def train(batch_size, device="cpu"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        x = torch.randn(batch_size, 128, device=device)
        y = torch.randint(0, 10, (batch_size,), device=device)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--library", action="store_true")
    args = parser.parse_args()
    if not args.library:
        train(args.batch_size)  # the script torchdoctor estimate runs
        sys.exit(0)
    cpu = torchdoctor.estimate_memory(train, batch_sizes=[16, 128], budget="6MiB")
    gpu = torchdoctor.estimate_memory(lambda b: train(b, "cuda"), batch_sizes=[16], gpu="T4")
    errors = []
    for bad in (lambda: torchdoctor.estimate_memory(42), lambda: torchdoctor.estimate_memory(lambda b: None)):
        try:
            bad()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    after = torch.ones(4)
    print(json.dumps({"cpu": cpu, "gpu": gpu, "errors": errors, "cuda_after": torch.cuda.is_available(),
                      "real_after": type(after).__name__ == "Tensor" and after.sum().item() == 4.0}))
"""


def test_the_library_call_gives_the_clis_figures_and_leaves_the_process_as_it_was(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    result = run_python(["train.py", "--library"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["real_after"] and got["cuda_after"] is False  # fake mode and the CUDA stand-ins are gone
    cli = run_torchdoctor(["estimate", "--batch-sizes", "16,128", "--budget", "6MiB", "--json", "cli.json",
                           "train.py"], cwd=tmp_path, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    expected = json.loads((tmp_path / "cli.json").read_text())
    assert [e["peak_bytes"] for e in got["cpu"]["estimates"]] == [e["peak_bytes"] for e in expected["estimates"]]
    assert [e["by_kind"] for e in got["cpu"]["estimates"]] == [e["by_kind"] for e in expected["estimates"]]
    assert got["cpu"]["largest_batch"]["batch_size"] == expected["largest_batch"]["batch_size"]
    assert got["cpu"]["schema"] == "torchdoctor-estimate"
    kinds = got["gpu"]["estimates"][0]["gpu"]["by_kind"]
    assert kinds["parameters"] == 128 * 512 * 4 + 512 * 4 + 512 * 10 * 4 + 512  # each block rounded up to 512
    assert kinds["cublas_workspace"] == 2 * (8 * 2**20 + 128 * 2**10)  # T4 (sm75): torch's default, 2 threads
    assert got["errors"][0].startswith("UsageError: estimate_memory takes a function of the batch size")
    assert got["errors"][1].startswith("TorchDoctorError: train(8) ended on fake tensors before its optimizer step 1")
