"""A multi-output model returning a dict; the training loss uses one of its outputs."""
import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(7, 14), nn.ReLU())
        self.cls = nn.Linear(14, 3)
        self.reg = nn.Linear(14, 1)

    def forward(self, x):
        h = self.trunk(x)
        return {"class_logits": self.cls(h), "value": self.reg(h)}


torch.set_num_threads(1)
torch.manual_seed(0)
X, c, v = torch.randn(90, 7), torch.randint(0, 3, (90,)), torch.randn(90, 1)
model = TwoHeads()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for epoch in range(2):
    for i in range(0, 90, 15):
        out = model(X[i:i + 15])
        loss = nn.functional.cross_entropy(out["class_logits"], c[i:i + 15]) + nn.functional.mse_loss(
            out["value"], v[i:i + 15])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
