"""A Hugging-Face-style model (returns a dict with "loss"), trained by a Trainer that accumulates
gradient_accumulation_steps micro-batches made by its collate function, for max_steps optimizer steps."""
import random

import torch
import torch.nn.functional as F
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=30, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels):
        logits = self.lm_head(self.embed(input_ids))
        return {"loss": F.cross_entropy(logits.flatten(0, 1), labels.flatten()), "logits": logits}


class Trainer:
    def __init__(self, model, examples, gradient_accumulation_steps=4, max_steps=12):
        self.model, self.examples = model, examples
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.max_steps = max_steps
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)

    def collate(self, items):
        ids = torch.stack(items)
        return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def training_step(self, batch):
        outputs = self.model(**batch)
        loss = outputs["loss"]
        loss.backward()
        return loss.detach()

    def train(self):
        self.model.train()
        for step in range(self.max_steps):
            for _ in range(self.gradient_accumulation_steps):
                self.training_step(self.collate(random.sample(self.examples, 4)))
            self.optimizer.step()
            self.optimizer.zero_grad()


torch.set_num_threads(1)
torch.manual_seed(0)
random.seed(0)
Trainer(TinyLM(), [torch.randint(0, 30, (9,)) for _ in range(50)]).train()
