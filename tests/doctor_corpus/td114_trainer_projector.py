"""A contrastive-style Trainer: the optimizer is built over the model, then a projection head is created and
used in the loss."""
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16))

    def forward(self, x):
        return {"embedding": self.net(x)}


class Trainer:
    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.projector = nn.Linear(16, 8)

    def train_step(self, a, b):
        self.optimizer.zero_grad()
        za = self.projector(self.model(a)["embedding"])
        zb = self.projector(self.model(b)["embedding"])
        loss = nn.functional.cosine_embedding_loss(za, zb, torch.ones(len(a)))
        loss.backward()
        self.optimizer.step()


torch.set_num_threads(1)
torch.manual_seed(0)
trainer = Trainer(Encoder())
data = torch.randn(64, 12)
for i in range(0, 64, 8):
    x = data[i:i + 8]
    trainer.train_step(x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x))
