"""Multi-task learning: one shared trunk, one head per task; each task's loss is backpropagated in turn
(the objective is the sum of the task losses), then one step."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
heads = nn.ModuleDict({"price": nn.Linear(16, 1), "volume": nn.Linear(16, 1), "risk": nn.Linear(16, 1)})
params = list(trunk.parameters()) + list(heads.parameters())
optimizer = torch.optim.Adam(params, lr=1e-3)
data = {task: (torch.randn(64, 6), torch.randn(64, 1)) for task in heads}
for it in range(20):
    optimizer.zero_grad()
    for task, head in heads.items():
        x, y = data[task]
        sl = slice((it * 8) % 64, (it * 8) % 64 + 8)
        loss = nn.functional.mse_loss(head(trunk(x[sl])), y[sl])
        loss.backward()
    optimizer.step()
