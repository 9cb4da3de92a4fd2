"""Regression on synthetic data, accumulating gradients over windows of 4 micro-batches (12 batches per epoch)."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
data = TensorDataset(torch.randn(96, 6), torch.randn(96, 1))
loader = DataLoader(data, batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
accumulate = 4
for epoch in range(2):
    for i, (x, y) in enumerate(loader):
        if i % accumulate == 0:
            optimizer.zero_grad()
        loss = F.mse_loss(model(x), y) / accumulate
        loss.backward()
        optimizer.step()
