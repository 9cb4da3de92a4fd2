"""Fine-tune-from-scratch of a tiny GPT-2 (built from a config, no download) with transformers.Trainer on synthetic
token sequences, the way many causal-LM scripts do it.

The stock PrinterCallback is replaced by a callback that prints only the step and the loss (the stock one prints
run times). After training the script measures the loss on a fixed evaluation set itself and saves the model's
state_dict to OUTPUT_DIR/model_state.pt.

    python hf_trainer.py --per_device_train_batch_size 16 --max_steps 10 --output_dir out-hf
"""
import argparse
import os

import torch
from torch.utils.data import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)


class ProgressionDataset(Dataset):
    """Sequences of arithmetic progressions modulo the vocabulary, with a few corrupted tokens."""

    def __init__(self, n, seq_len, vocab_size, seed):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab_size, (n, 1), generator=g)
        stride = torch.randint(1, 6, (n, 1), generator=g)
        seq = (start + stride * torch.arange(seq_len)) % vocab_size
        noise = torch.rand(n, seq_len, generator=g) < 0.05
        seq[noise] = torch.randint(0, vocab_size, (int(noise.sum()),), generator=g)
        self.input_ids = seq

    def __len__(self):
        return self.input_ids.size(0)

    def __getitem__(self, i):
        ids = self.input_ids[i]
        return {"input_ids": ids, "labels": ids.clone()}


class LossPrinter(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            print(f"step {state.global_step}: loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0.0):.2e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--max_steps", type=int, default=10)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--output_dir", type=str, default="out-hf")
    args = parser.parse_args()

    set_seed(0)
    vocab_size = 64
    config = GPT2Config(vocab_size=vocab_size, n_positions=args.seq_len, n_embd=64, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    print(f"model parameters: {model.num_parameters():,}")

    train_dataset = ProgressionDataset(512, args.seq_len, vocab_size, seed=1)
    eval_dataset = ProgressionDataset(64, args.seq_len, vocab_size, seed=2)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        warmup_steps=2,
        lr_scheduler_type="linear",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LossPrinter())
    result = trainer.train()
    print(f"trained {result.global_step} steps, mean training loss {result.training_loss:.4f}")

    # held-out loss, measured by hand on the fixed evaluation set
    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(0, len(eval_dataset), 16):
            ids = eval_dataset.input_ids[i:i + 16]
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    print(f"final val loss {sum(losses) / len(losses):.8f}")

    os.makedirs(args.output_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.output_dir, "model_state.pt"))


if __name__ == "__main__":
    main()
