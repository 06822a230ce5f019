"""What makes a translation model trained from its config learn in its first 6,400 pairs: the
sample order of the stream (`train.length_group_window`) and whether Marian's sinusoidal
position tables train.

The real `FineTuneLoop` on Multi30K German to English (research and education use only) with
the quick experiment's model (`python -m raytune_ft.multi30k data` writes it), one thread,
the settings of the plain PyTorch loop that reached BLEU 9.2 after 6,400 pairs (batch 32,
lr 1e-3, 10% warmup, linear to 0 at 19,200 pairs, label smoothing 0.1, AdamW beta2 0.98):
one interval of 6,400 pairs, then sacreBLEU (cased) on the first 500 test_2016_flickr
sentences, greedy, at most 40 new tokens.

    python benchmarks/seq2seq_order.py --window 2048 [--train-positions] [--model DIR]

`--window 1` is a plain seeded shuffle; 2048 is the default length grouping.
`--train-positions` puts back what the code did before the fixed-parameters fix (every
parameter freezing did not name trained, the position tables included).
"""

from __future__ import annotations

import argparse
import time

import _common

DATA = _common.REPO.parent / "shared" / "data" / "translation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(_common.REPO / "data" / "marian-multi30k"))
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--train-positions", action="store_true")
    args = parser.parse_args()
    import torch

    from raytune_ft.config import TrainConfig
    from raytune_ft.schema import data_settings
    from raytune_ft.tasks import get_task
    from raytune_ft.training.loop import FineTuneLoop
    from raytune_ft.training.model import load_pretrained

    torch.set_num_threads(1)
    data = data_settings(kind="seq2seq", train_file=str(DATA / "train"),
                         eval_file=str(DATA / "test_2016_flickr"), source_lang="de",
                         target_lang="en", max_eval_samples=500, eval_subset="first",
                         max_target_length=64, generation={"max_new_tokens": 40})
    task = get_task("seq2seq")
    bundle = task.load_data(data, args.model, 64)
    n = len(bundle.train)
    hp = TrainConfig(batch_size=32, max_micro_batch=32, learning_rate=1e-3, warmup_ratio=0.1,
                     max_epochs=19200 / n, eval_every_epochs=6400 / n, label_smoothing=0.1,
                     adam_beta2=0.98, eval_batch_size=100, length_group_window=args.window)
    model = load_pretrained("AutoModelForSeq2SeqLM", args.model, 0)
    if args.train_positions:
        for param in model.parameters():
            param.requires_grad_(True)
        model.raytune_ft_fixed = frozenset()
    loop = FineTuneLoop(model, bundle, hp, "eval_bleu", "max", task=task)
    trained = sum(p.numel() for g in loop.optimizer.param_groups for p in g["params"])
    started, load = time.time(), _common.load_average()
    m = loop.run_interval()
    print(f"window {args.window}, positions {'trained' if args.train_positions else 'fixed'}, "
          f"{trained} parameters trained: after {m['samples_seen']} pairs BLEU "
          f"{m['eval_bleu']:.2f}, eval_loss {m['eval_loss']:.3f}, gen_len "
          f"{m['eval_gen_len']:.1f}; {time.time() - started:.0f} s, load {load}")


if __name__ == "__main__":
    main()
