"""An encoder and a head with separate optimizers (different learning rates); both are reset."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(12, 24), nn.Tanh())
head = nn.Linear(24, 2)
opt_encoder = torch.optim.SGD(encoder.parameters(), lr=0.01, momentum=0.9)
opt_head = torch.optim.SGD(head.parameters(), lr=0.1)
for step in range(6):
    x, y = torch.randn(20, 12), torch.randint(0, 2, (20,))
    opt_head.zero_grad()
    opt_encoder.zero_grad()
    loss = nn.functional.cross_entropy(head(encoder(x)), y)
    loss.backward()
    opt_encoder.step()
    opt_head.step()
