"""An auxiliary head used only on every other step (its gradient is None or stale-but-reset)."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
trunk = nn.Linear(6, 12)
main_head, aux_head = nn.Linear(12, 1), nn.Linear(12, 1)
params = list(trunk.parameters()) + list(main_head.parameters()) + list(aux_head.parameters())
optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
for step in range(8):
    x, y = torch.randn(8, 6), torch.randn(8, 1)
    optimizer.zero_grad()
    features = torch.relu(trunk(x))
    loss = nn.functional.mse_loss(main_head(features), y)
    if step % 2 == 0:
        loss = loss + 0.1 * nn.functional.mse_loss(aux_head(features), y)
    loss.backward()
    optimizer.step()
