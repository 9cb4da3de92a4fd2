"""Wide-output regressor trained for 10 epochs, keeping detached outputs for an epoch-level statistic."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(384, 32), torch.randn(384, 2048)), batch_size=64, shuffle=True)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2048))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
history = []
for epoch in range(10):
    for x, y in loader:
        optimizer.zero_grad()
        out = model(x)
        loss = nn.functional.mse_loss(out, y)
        loss.backward()
        optimizer.step()
        history.append(out.detach())
    epoch_mean = torch.cat(history).mean()
