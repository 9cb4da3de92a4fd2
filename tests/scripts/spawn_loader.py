"""DataLoader workers started with a given multiprocessing context, over a Dataset class defined here."""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class SquaresDataset(Dataset):  # must pickle into spawned workers as __main__.SquaresDataset / __mp_main__
    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = torch.full((4,), float(i))
        return x, x.sum()


def main() -> None:
    context = sys.argv[1] if len(sys.argv) > 1 else "spawn"
    torch.manual_seed(0)
    loader = DataLoader(SquaresDataset(), batch_size=16, num_workers=2, multiprocessing_context=context)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    seen = 0
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            loss = ((model(x).squeeze(1) - y) ** 2).mean()
            loss.backward()
            opt.step()
            seen += x.shape[0]
    print(f"context={context} samples={seen} weight_sum={model.weight.sum().item():.6f}")


if __name__ == "__main__":
    main()
