"""torchdoctor as a library: a training step that survives OOMs, checkpoints that survive crashes.

    python examples/library_recovery.py

The CPU is made to behave like a 12 MiB device (`memory_budget`), so the batch of 1024 really runs out of memory;
`ResilientStep` retries only that step in micro-batches, with gradient accumulation, and keeps the size that
worked (the losses are the ones the full batch gives). Every 4 steps an atomic, exact-resume checkpoint is
written, and the newest valid one is loaded back at the end.
"""

import logging
import tempfile

import torch
from torch import nn

import torchdoctor

logging.basicConfig(level=logging.WARNING, format="%(message)s")


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = torchdoctor.ResilientStep(opt)
    directory = tempfile.mkdtemp(prefix="torchdoctor-ckpt-")
    g = torch.Generator().manual_seed(1)
    with torchdoctor.memory_budget("12MiB"):
        for i in range(1, 9):
            x, y = torch.randn(1024, 256, generator=g), torch.randint(0, 10, (1024,), generator=g)
            loss = step(lambda mb: nn.functional.cross_entropy(model(mb[0]), mb[1]), (x, y))
            print(f"step {i}: loss {loss.item():.4f} ({step.micro_batches} micro-batches per batch)")
            if i % 4 == 0:
                path = torchdoctor.save_checkpoint(directory, model=model, optimizer=opt, step=i, loss=loss.item())
                print(f"  checkpoint {path}")
    for record in step.history:
        print(f"recovered: {record.change}; memory back to baseline: {record.leaked_bytes == 0}")
    restored = torchdoctor.load_checkpoint(directory, model=model, optimizer=opt)
    print(f"newest valid checkpoint: step {restored.step} ({restored.path})")


if __name__ == "__main__":
    main()
