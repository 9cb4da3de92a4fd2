"""Two-stage fine-tuning: the head alone, then the whole model with a new optimizer."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
backbone = nn.Sequential(nn.Linear(8, 24), nn.ReLU())
head = nn.Linear(24, 3)
X, y = torch.randn(160, 8), torch.randint(0, 3, (160,))
backbone.requires_grad_(False)
optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
for stage in range(2):
    if stage == 1:
        backbone.requires_grad_(True)
        optimizer = torch.optim.Adam([{"params": backbone.parameters(), "lr": 1e-4},
                                      {"params": head.parameters()}], lr=1e-3)
    for i in range(0, 160, 16):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(backbone(X[i:i + 16])), y[i:i + 16]).backward()
        optimizer.step()
