"""A mixed-precision Trainer (bf16 autocast with a GradScaler) that clips gradients in train_step."""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 3))

    def forward(self, x, y):
        logits = self.mlp(x)
        return logits, nn.functional.cross_entropy(logits, y)


class AmpTrainer:
    def __init__(self, model, max_norm=1.0):
        self.model, self.max_norm = model, max_norm
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.scaler = torch.amp.GradScaler("cpu")

    def train_step(self, x, y):
        self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = self.model(x, y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()


torch.set_num_threads(1)
torch.manual_seed(0)
trainer = AmpTrainer(Model())
X, Y = torch.randn(64, 8), torch.randint(0, 3, (64,))
for i in range(0, 64, 8):
    trainer.train_step(X[i:i + 8], Y[i:i + 8])
