"""A Trainer that trains a deep copy of the model it is given (so the caller's model stays untouched); the
optimizer was made by the caller."""
import copy

import torch
from torch import nn


class Trainer:
    def __init__(self, model, optimizer):
        self.model = copy.deepcopy(model)
        self.optimizer = type(optimizer)(self.model.parameters(), **optimizer.defaults)

    def train_step(self, x, y):
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()


torch.set_num_threads(1)
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(3, 9), nn.ReLU(), nn.Linear(9, 1))
trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.05))
X, Y = torch.randn(60, 3), torch.randn(60, 1)
for i in range(0, 60, 10):
    trainer.train_step(X[i:i + 10], Y[i:i + 10])
