"""LSTM language model (embedding 128, 2-layer LSTM with hidden 256, 64 tokens, vocabulary 1000), Adam, fp32,
random tokens made here: a workload of bench/estimate.py.

    python bench/estimate_workloads/lstm.py --batch-size 32 --steps 3
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, SEQ = 1000, 64


class LSTMLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 128)
        self.lstm = nn.LSTM(128, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(idx))[0])


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = LSTMLM()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def make_batch(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (batch_size, SEQ + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, optimizer = model_and_optimizer()
    for step in range(args.steps):
        x, y = make_batch(args.batch_size, g)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model, x, y)
        loss.backward()
        optimizer.step()
        print(f"step {step + 1}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
