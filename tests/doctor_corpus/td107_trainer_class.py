"""A Trainer whose train_step does one micro-batch (forward, backward, scheduler) and whose training_loop
steps the optimizer every grad_accum micro-batches; cosine schedule over the optimizer steps."""
import torch
from torch import nn


class Trainer:
    def __init__(self, model, total_steps, grad_accum=4):
        self.model = model
        self.grad_accum = grad_accum
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total_steps)

    def train_step(self, xb, yb):
        loss = nn.functional.mse_loss(self.model(xb), yb) / self.grad_accum
        loss.backward()
        self.sched.step()
        return loss.item()

    def training_loop(self, X, Y, micro_batch=8):
        for n, i in enumerate(range(0, len(X), micro_batch)):
            self.train_step(X[i:i + micro_batch], Y[i:i + micro_batch])
            if (n + 1) % self.grad_accum == 0:
                self.opt.step()
                self.opt.zero_grad()


torch.set_num_threads(1)
torch.manual_seed(0)
X, Y = torch.randn(256, 4), torch.randn(256, 1)
trainer = Trainer(nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 1)), total_steps=256 // 8 // 4)
trainer.training_loop(X, Y)
