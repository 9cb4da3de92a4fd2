"""A tiny GPT-2 (built from a GPT2Config, no download) trained by transformers.Trainer on token sequences made here,
fp32 on the CPU, evaluated every 3 steps by the Trainer: correct code the doctor must stay silent on, and broken
variants it must find.

    python hf_trainer.py [--accum 2] [--broken optimizer-on-copy|kept-logits|zero-grad-in-step]

- ``optimizer-on-copy``: the optimizer handed to the Trainer holds a deep copy's parameters, so the trained model's
  gradients are never applied;
- ``kept-logits``: a Trainer subclass whose ``compute_loss`` keeps every step's logits (with their graph) in a list;
- ``zero-grad-in-step``: a Trainer subclass whose ``training_step`` resets the gradients after its backward pass.
"""
import argparse
import copy

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed


class Progressions(Dataset):
    """Arithmetic progressions modulo the vocabulary."""

    def __init__(self, n, seq_len, vocab_size, seed):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab_size, (n, 1), generator=g)
        stride = torch.randint(1, 6, (n, 1), generator=g)
        self.input_ids = (start + stride * torch.arange(seq_len)) % vocab_size

    def __len__(self):
        return self.input_ids.size(0)

    def __getitem__(self, i):
        ids = self.input_ids[i]
        return {"input_ids": ids, "labels": ids.clone()}


class KeptLogitsTrainer(Trainer):
    """Keeps each step's logits for a later look, graph and all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self.history.append(outputs.logits)
        return (loss, outputs) if return_outputs else loss


class ZeroGradInStepTrainer(Trainer):
    """Resets the gradients once its backward pass is done: the optimizer then steps with none."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        model.zero_grad()
        return loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--broken", choices=["optimizer-on-copy", "kept-logits", "zero-grad-in-step"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    set_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0)
    model = GPT2LMHeadModel(config)
    training_args = TrainingArguments(
        output_dir="out-hf", per_device_train_batch_size=8, gradient_accumulation_steps=args.accum,
        max_steps=args.steps, learning_rate=3e-3, warmup_steps=2, logging_steps=1, report_to=[],
        save_strategy="no", eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=16, use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    kwargs = {}
    trainer_class = {"kept-logits": KeptLogitsTrainer, "zero-grad-in-step": ZeroGradInStepTrainer}.get(args.broken,
                                                                                                        Trainer)
    if args.broken == "optimizer-on-copy":
        kwargs["optimizers"] = (torch.optim.AdamW(copy.deepcopy(model).parameters(), lr=3e-3), None)
    trainer = trainer_class(model=model, args=training_args, train_dataset=Progressions(256, 32, 64, seed=1),
                            eval_dataset=Progressions(32, 32, 64, seed=2), **kwargs)
    result = trainer.train()
    print(f"trained {result.global_step} steps, mean training loss {result.training_loss:.4f}")


if __name__ == "__main__":
    main()
