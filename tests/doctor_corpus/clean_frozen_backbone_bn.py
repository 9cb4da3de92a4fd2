"""A frozen backbone with BatchNorm kept in eval mode; only the head trains."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
backbone = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU())
head = nn.Linear(20, 3)
for p in backbone.parameters():
    p.requires_grad_(False)
optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
for step in range(6):
    backbone.eval()
    head.train()
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(head(backbone(x)), y).backward()
    optimizer.step()
