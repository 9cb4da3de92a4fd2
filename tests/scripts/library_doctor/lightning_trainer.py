"""A small MLP classifier as a LightningModule, fitted by lightning.pytorch.Trainer on data made here, on the CPU:
validated after each epoch by the Trainer: correct code the doctor must stay silent on, and broken variants it
must find.

    python lightning_trainer.py [--accum 2] [--manual] [--log] [--broken manual-no-zero-grad|kept-losses|...]

- ``--log``: the validation step logs its loss with ``self.log`` (a torchmetrics metric Lightning makes);
- ``--manual``: manual optimization done right (``opt.zero_grad()``, ``self.manual_backward(loss)``, ``opt.step()``);
- ``manual-no-zero-grad``: manual optimization whose ``training_step`` never calls ``opt.zero_grad()``;
- ``kept-losses``: automatic optimization whose ``training_step`` keeps every loss (with its graph) in a list;
- ``scheduler-per-batch``: manual optimization with accumulation over 2 batches whose LR scheduler steps every batch.
"""
import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + (x[:, 4:8].sum(1) > 0).long()
    return TensorDataset(x, y)


class Classifier(pl.LightningModule):
    def __init__(self, broken=None, manual=False, log=False):
        super().__init__()
        self.log_validation = log
        self.val_losses = []
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
        self.broken = broken
        self.automatic_optimization = not (manual or broken in ("manual-no-zero-grad", "scheduler-per-batch"))
        self.losses = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.automatic_optimization:
            if self.broken == "kept-losses":
                self.losses.append(loss)
            return loss
        opt = self.optimizers()
        if self.broken == "scheduler-per-batch":
            self.manual_backward(loss / 2)
            self.lr_schedulers().step()
            if (batch_idx + 1) % 2 == 0:
                opt.step()
                opt.zero_grad()
            return loss
        if self.broken != "manual-no-zero-grad":
            opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.log_validation:
            self.log("val_loss", loss)
        self.val_losses.append(loss.item())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        if self.broken == "scheduler-per-batch":
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=100)]
        return optimizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--manual", action="store_true")
    parser.add_argument("--log", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--broken", choices=["manual-no-zero-grad", "kept-losses", "scheduler-per-batch"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    loader = DataLoader(make_data(256, seed=1), batch_size=32, shuffle=True)
    model = Classifier(broken=args.broken, manual=args.manual, log=args.log)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=args.accum if model.automatic_optimization else 1)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=DataLoader(make_data(64, seed=2), batch_size=32))
    print(f"fit done: {trainer.global_step} optimizer steps, last validation loss {model.val_losses[-1]:.4f}")


if __name__ == "__main__":
    main()
