"""A small CNN as a LightningModule, trained by lightning.pytorch.Trainer on synthetic 3-channel images.

    python lightning_trainer.py --batch-size 128 --max-epochs 2 --out model.pt

After fitting, the script measures the loss on a fixed held-out set itself (eval mode, no_grad) and saves the
network's state_dict to --out.
"""
import argparse

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def make_images(n, seed, n_classes=6, size=16):
    """Colour-coded textures: each class has a dominant channel and a stripe orientation/frequency."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images = torch.empty(n, 3, size, size)
    for start in range(0, n, 256):
        lab = labels[start:start + 256]
        k = lab.numel()
        freq = (0.3 + 0.15 * (lab % 3).float()).view(-1, 1, 1)
        angle = ((lab // 3).float() * 1.2).view(-1, 1, 1)
        phase = (torch.rand(k, generator=g) * 6.28).view(-1, 1, 1)
        stripes = torch.sin(freq * (torch.cos(angle) * xx + torch.sin(angle) * yy) + phase)
        chunk = 0.5 * torch.randn(k, 3, size, size, generator=g)
        chunk[torch.arange(k), lab % 3] += stripes
        images[start:start + k] = chunk
    return TensorDataset(images, labels)


class LitCNN(pl.LightningModule):
    def __init__(self, lr=2e-3, n_classes=6, width=24):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, n_classes),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if batch_idx % 5 == 0:
            print(f"epoch {self.current_epoch} batch {batch_idx}: loss {loss.item():.4f}")
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=str, default="model.pt")
    args = parser.parse_args()

    pl.seed_everything(0)
    train_set = make_images(1536, seed=1)
    val_set = make_images(512, seed=2)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=0)

    model = LitCNN(lr=args.lr)
    trainer = pl.Trainer(max_epochs=args.max_epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=1, deterministic=True)
    trainer.fit(model, train_dataloaders=train_loader)
    print(f"fit done: {trainer.global_step} optimizer steps")

    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for x, y in DataLoader(val_set, batch_size=128):
            logits = model(x)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    print(f"val accuracy {correct / len(val_set):.4f}")
    print(f"final val loss {total / len(val_set):.8f}")
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
