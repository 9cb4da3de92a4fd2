"""Fine-tuning: the head trains alone for an epoch, then the backbone is unfrozen; the optimizer was built
over the parameters that required grad at the start."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
head = nn.Linear(32, 2)
model = nn.Sequential(backbone, head)
for p in backbone.parameters():
    p.requires_grad = False
optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
loader = DataLoader(TensorDataset(torch.randn(128, 8), torch.randint(0, 2, (128,))), batch_size=16, shuffle=True)
for epoch in range(3):
    if epoch == 1:
        for p in backbone.parameters():
            p.requires_grad = True
        optimizer.add_param_group({"params": list(backbone.parameters()), "lr": 1e-4})
    for x, y in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
