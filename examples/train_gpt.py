"""A small character-level GPT on a synthetic corpus (no downloads): the example for `torchdoctor run`.

    python examples/train_gpt.py
    torchdoctor run examples/train_gpt.py                          # as python would run it, measured
    torchdoctor run --memory-budget 24MiB examples/train_gpt.py    # as if the device had 24 MiB: it runs out of
                                                                   # memory, recovers, and trains as asked
"""

import argparse
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset


class Windows(Dataset):
    """Every `block`-long window of a token sequence, with the next-token targets."""

    def __init__(self, tokens: torch.Tensor, block: int) -> None:
        self.tokens, self.block = tokens, block

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.tokens[i * self.block:(i + 1) * self.block + 1]
        return chunk[:-1], chunk[1:]


def corpus(n: int, vocab: int, seed: int) -> torch.Tensor:
    """Text-like tokens: a random walk over the vocabulary with frequent repeats."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(-2, 3, (n,), generator=g)
    return torch.cumsum(steps, 0).remainder(vocab)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        causal = torch.triu(torch.ones(x.size(1), x.size(1), dtype=torch.bool), diagonal=1)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, dim: int = 64, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(block, dim)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    vocab = 48
    train = DataLoader(Windows(corpus(8_192, vocab, seed=1), args.block), batch_size=args.batch_size,
                       shuffle=True)
    val = DataLoader(Windows(corpus(2_048, vocab, seed=2), args.block), batch_size=32)
    model = GPT(vocab, args.block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps = args.epochs * len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))

    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for x, y in train:
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            val_loss = sum(model(x, y)[1].item() for x, y in val) / len(val)
        print(f"epoch {epoch + 1}: train loss {total / len(train):.4f}  val loss {val_loss:.4f}")
    print(f"final val loss {val_loss:.6f}")


if __name__ == "__main__":
    main()
