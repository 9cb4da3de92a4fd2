"""Training fits; the evaluation pass (eval mode, autograd left on, a large batch) does not."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(3)
train_x, train_y = torch.randn(512, 64, generator=g), torch.randint(0, 4, (512,), generator=g)
val_x = torch.randn(8192, 64, generator=g)
for epoch in range(2):
    model.train()
    for i in range(0, 512, 64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train_x[i:i + 64]), train_y[i:i + 64]).backward()
        opt.step()
    model.eval()
    scores = model(val_x)  # no torch.no_grad(): every activation of 8192 rows is kept for a backward never run
    print(f"epoch {epoch}: mean score {scores.mean().item():.4f}")
if args.out:
    torch.save(model.state_dict(), args.out)
