"""fixed: zero_grad(set_to_none=False) before the forward pass."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
for step in range(5):
    x, y = torch.randn(8, 2, 16), torch.randn(8, 1)
    optimizer.zero_grad(set_to_none=False)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
