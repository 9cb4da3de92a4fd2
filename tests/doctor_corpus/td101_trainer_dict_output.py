"""A small Trainer class around a classifier that returns a dict with its loss (as Hugging Face models do);
batches are built by a collate function called in the loop."""
import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    def __init__(self, d_in=12, hidden=24, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))

    def forward(self, inputs, labels=None):
        logits = self.net(inputs)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def collate(rows):
    xs, ys = zip(*rows)
    return {"inputs": torch.stack(xs), "labels": torch.stack(ys)}


class Trainer:
    def __init__(self, model, lr=0.05):
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def train_step(self, batch):
        out = self.model(**batch)
        out["loss"].backward()
        self.opt.step()
        return out["loss"].item()

    def fit(self, rows, epochs=3, batch_size=8):
        for _ in range(epochs):
            order = torch.randperm(len(rows)).tolist()
            for start in range(0, len(order), batch_size):
                batch = collate([rows[i] for i in order[start:start + batch_size]])
                self.train_step(batch)


torch.set_num_threads(1)
torch.manual_seed(0)
rows = [(torch.randn(12), torch.randint(0, 3, ())) for _ in range(64)]
Trainer(Classifier()).fit(rows)
