"""A trainer that runs until max_steps optimizer steps, 2 micro-batches of padded token sequences each
(a token-mean cross-entropy, divided by the number of micro-batches)."""
import torch
from torch import nn


class SeqTrainer:
    def __init__(self, vocab=16, max_steps=6, grad_accum=2):
        self.vocab = vocab
        self.model = nn.Sequential(nn.Embedding(vocab, 8), nn.Linear(8, vocab))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=0, reduction="sum")
        self.max_steps, self.grad_accum = max_steps, grad_accum
        self.step = 0

    def make_batch(self, micro):
        keep = 2 if micro % 2 == 0 else 12  # a short micro-batch, then a long one
        x = torch.randint(1, self.vocab, (4, 12))
        y = torch.randint(1, self.vocab, (4, 12))
        y[:, keep:] = 0
        return x, y

    def micro_step(self, x, y):
        logits = self.model(x)
        loss = self.loss_fn(logits.view(-1, self.vocab), y.view(-1)) / self.window_tokens
        loss.backward()

    def run(self):
        micro = 0
        while self.step < self.max_steps:
            if micro % self.grad_accum == 0:  # the window's target tokens: micro-batches of 4 x 2 and 4 x 12
                self.window_tokens = 4 * 2 + 4 * 12
            self.micro_step(*self.make_batch(micro))
            micro += 1
            if micro % self.grad_accum == 0:
                self.opt.step()
                self.opt.zero_grad()
                self.step += 1


torch.set_num_threads(1)
torch.manual_seed(0)
SeqTrainer().run()
