"""A small self-written Trainer with a hand-batched loop (no DataLoader): the data are two tensors X, Y and each
epoch walks a fresh permutation in slices of --batch-size. The model returns a dict with "logits" and "loss".

    python hand_batched_trainer.py --batch-size 512 --epochs 3 --out classifier.pt
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_data(n, dim, n_classes, seed):
    """Gaussian clusters around class centres, pushed through a fixed random non-linearity."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(0)) * 0.45
    mix = torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)) / math.sqrt(dim)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    x = torch.tanh(x @ mix) + 0.1 * x
    return x, y


class ResidualMLP(nn.Module):
    def __init__(self, dim, hidden, n_classes, depth):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
            for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x, labels=None):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        logits = self.head(self.norm(h))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class Trainer:
    def __init__(self, model, batch_size, lr, epochs, seed=0, log_every=5):
        self.model = model
        self.batch_size = batch_size
        self.epochs = epochs
        self.log_every = log_every
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
        self.g = torch.Generator().manual_seed(seed)
        self.global_step = 0

    def fit(self, X, Y, X_val, Y_val):
        n = X.size(0)
        for epoch in range(self.epochs):
            self.model.train()
            perm = torch.randperm(n, generator=self.g)
            running, seen = 0.0, 0
            for i in range(0, n, self.batch_size):
                idx = perm[i:i + self.batch_size]
                xb, yb = X[idx], Y[idx]
                out = self.model(xb, labels=yb)
                loss = out["loss"]
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.global_step += 1
                running += loss.item() * xb.size(0)
                seen += xb.size(0)
                if self.global_step % self.log_every == 0:
                    print(f"epoch {epoch} step {self.global_step}: loss {loss.item():.4f}")
            val_loss, val_acc = self.evaluate(X_val, Y_val)
            print(f"epoch {epoch} done: train loss {running / seen:.4f}  val loss {val_loss:.4f}  val acc {val_acc:.3f}")

    @torch.no_grad()
    def evaluate(self, X, Y, batch_size=512):
        self.model.eval()
        total, correct = 0.0, 0
        for i in range(0, X.size(0), batch_size):
            out = self.model(X[i:i + batch_size], labels=Y[i:i + batch_size])
            total += out["loss"].item() * out["logits"].size(0)
            correct += (out["logits"].argmax(-1) == Y[i:i + batch_size]).sum().item()
        self.model.train()
        return total / X.size(0), correct / X.size(0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--out", type=str, default="classifier.pt")
    args = parser.parse_args()

    torch.manual_seed(0)
    dim, n_classes = 64, 12
    X, Y = make_data(8192, dim, n_classes, seed=1)
    X_val, Y_val = make_data(2048, dim, n_classes, seed=2)
    model = ResidualMLP(dim, args.hidden, n_classes, args.depth)
    print(f"model parameters: {sum(p.numel() for p in model.parameters()):,}")
    trainer = Trainer(model, batch_size=args.batch_size, lr=args.lr, epochs=args.epochs)
    trainer.fit(X, Y, X_val, Y_val)

    val_loss, val_acc = trainer.evaluate(X_val, Y_val)
    print(f"final val acc {val_acc:.4f}")
    print(f"final val loss {val_loss:.8f}")
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
