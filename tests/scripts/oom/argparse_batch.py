"""No DataLoader: the batch size comes from --batch_size (argparse); the loop goes over the data in epochs."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--batch_size", type=int, default=1024)
parser.add_argument("--out")
args = parser.parse_args()

torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
X, Y = torch.randn(4096, 256, generator=g), torch.randint(0, 10, (4096,), generator=g)
model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for epoch in range(2):
    for i in range(0, len(X), args.batch_size):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[i:i + args.batch_size]), Y[i:i + args.batch_size]).backward()
        opt.step()
print(f"batch_size={args.batch_size}")
if args.out:
    torch.save(model.state_dict(), args.out)
