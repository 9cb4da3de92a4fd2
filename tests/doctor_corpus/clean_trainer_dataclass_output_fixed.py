"""A Trainer with train_step/training_loop methods; the model returns a dataclass output; accumulation over 2."""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelOutput:
    loss: torch.Tensor
    logits: torch.Tensor


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(8, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x, y):
        logits = self.head(torch.relu(self.encoder(x)))
        return ModelOutput(loss=nn.functional.cross_entropy(logits, y), logits=logits)


class Trainer:
    def __init__(self, model, accumulation_steps=2):
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.accumulation_steps = accumulation_steps

    def train_step(self, x, y):
        output = self.model(x, y)
        (output.loss / self.accumulation_steps).backward()
        return output

    def training_loop(self, x_all, y_all, iterations):
        for i in range(iterations):
            sl = slice((i * 8) % 96, (i * 8) % 96 + 8)
            self.train_step(x_all[sl], y_all[sl])
            if (i + 1) % self.accumulation_steps == 0:
                self.optimizer.step()
                self.optimizer.zero_grad()


torch.set_num_threads(1)
torch.manual_seed(0)
trainer = Trainer(Model())
trainer.training_loop(torch.randn(96, 8), torch.randint(0, 2, (96,)), iterations=24)
