"""Two losses on one forward pass, the first backward with retain_graph=True."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
head_a, head_b = nn.Linear(16, 1), nn.Linear(16, 3)
params = list(trunk.parameters()) + list(head_a.parameters()) + list(head_b.parameters())
optimizer = torch.optim.Adam(params, lr=1e-3)
for step in range(6):
    x = torch.randn(12, 8)
    optimizer.zero_grad()
    features = trunk(x)
    loss_a = nn.functional.mse_loss(head_a(features), torch.randn(12, 1))
    loss_b = nn.functional.cross_entropy(head_b(features), torch.randint(0, 3, (12,)))
    loss_a.backward(retain_graph=True)
    loss_b.backward()
    optimizer.step()
