"""A masked regression loss (mean over the valid positions); from step 70 on some batches have no valid position."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
while step < 100:
    x, y = torch.randn(8, 5), torch.randn(8, 1)
    mask = torch.rand(8, 1) > (0.3 if step < 70 else 1.0)
    optimizer.zero_grad()
    err = (model(x) - y) ** 2
    loss = (err * mask).sum() / mask.sum()
    loss.backward()
    optimizer.step()
    step += 1
