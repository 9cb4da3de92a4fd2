"""A Trainer whose model returns probabilities in a dict; the loss is the negative log-likelihood computed by hand."""
import torch
from torch import nn


class ProbModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return {"probs": torch.softmax(self.lin(x) * 60, dim=-1)}


class Trainer:
    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step(self, x, y):
        self.optimizer.zero_grad()
        probs = self.model(x)["probs"]
        loss = -torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).mean()
        loss.backward()
        self.optimizer.step()


torch.set_num_threads(1)
torch.manual_seed(0)
trainer = Trainer(ProbModel())
X, Y = torch.randn(40, 4) * 5, torch.randint(0, 3, (40,))
for i in range(0, 40, 8):
    trainer.train_step(X[i:i + 8], Y[i:i + 8])
