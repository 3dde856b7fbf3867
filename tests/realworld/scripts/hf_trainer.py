"""Fine-tuning with the Hugging Face Trainer, the way its documentation does, on a tiny
BERT built from a config (no download) and random token ids.

Run with ``torchrun --nproc-per-node 2 hf_trainer.py`` (the Trainer picks up
torchrun's environment and wraps the model in DDP over gloo on CPU) or with
``python``. ``--accum`` sets gradient_accumulation_steps; ``--eval`` adds an
eval dataset and eval_strategy="steps".
"""

import argparse
import os
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from tbdcheck import tbdcheck

parser = argparse.ArgumentParser()
parser.add_argument("--max-steps", type=int, default=12)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--accum", type=int, default=1)
parser.add_argument("--eval", action="store_true")
args = parser.parse_args()


class RandomTokens(Dataset):
    """A tokenized classification data set: input_ids, attention_mask, labels."""

    def __init__(self, n, seq_len=32, vocab=512, num_labels=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, vocab, (n, seq_len), generator=g)
        self.labels = torch.randint(0, num_labels, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones_like(self.input_ids[i]),
                "labels": self.labels[i]}


config = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64, num_labels=2)
model = BertForSequenceClassification(config)

world = int(os.environ.get("WORLD_SIZE", 1))
per_step = args.batch_size * args.accum * world
train_dataset = RandomTokens(per_step * args.max_steps)  # one epoch of full batches exactly
eval_dataset = RandomTokens(8 * world, seed=1) if args.eval else None

with tempfile.TemporaryDirectory() as out:
    training_args = TrainingArguments(
        output_dir=out,
        use_cpu=True,
        report_to=[],
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=args.accum,
        learning_rate=5e-4,
        logging_steps=4,
        save_strategy="no",
        eval_strategy="steps" if args.eval else "no",
        eval_steps=4,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset)
    result = trainer.train()

state = trainer.state
assert state.global_step == args.max_steps, state.global_step
rank = training_args.process_index
samples = state.global_step * args.accum * args.batch_size  # every batch is full: the data set is sized so
evals = sum(1 for entry in state.log_history if "eval_loss" in entry)
tbdcheck(rank, training_args.world_size, state.global_step, samples, trainer.model, evals=evals)
