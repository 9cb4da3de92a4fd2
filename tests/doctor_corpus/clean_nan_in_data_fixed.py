"""Synthetic linear-regression data fitted for 2 epochs by a small MLP."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
X = torch.randn(128, 8)
X[37, 2] = float("nan")
X = torch.nan_to_num(X)
y = X.nan_to_num() @ torch.randn(8, 1) + 0.1 * torch.randn(128, 1)
loader = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=False)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for epoch in range(2):
    for x, target in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
