"""Sequence-to-sequence speed: training target tokens/s, evaluation sentences/s (greedy and
4 beams), and the share of a trial's time spent generating.

The real `FineTuneLoop` on Multi30K German to English (research and education use only) with
the quick experiment's model (`python -m raytune_ft.multi30k data` writes it), one thread
like a 1-CPU trial:

  train     `FineTuneLoop._step` over `--steps` batches of `--batch` pairs taken at stream
            positions spread evenly through epoch 0 (length-grouped, as a trial takes them);
            figure: target tokens (the loss units) per second;
  evaluate  `FineTuneLoop.evaluate()` on the first `--eval` sentences of test_2016_flickr
            (teacher-forced eval_loss, then generation and sacreBLEU), greedy and with 4 beams;
            figure: sentences per second, and of the evaluation's time the generation's
            (`eval_predict_s`, what every trial reports).

Share of a trial's time spent generating, for the quick experiment's settings (an evaluation
of `--eval` sentences after every quarter epoch of 28,998 pairs): generation seconds per
evaluation / (training seconds per quarter epoch at the measured tokens/s + evaluation
seconds). The quick experiment's own trials report it directly (sum of `eval_predict_s` /
`time_total_s` in analysis/iterations.parquet and trials.parquet).

    python benchmarks/bench_seq2seq.py [--model data/marian-multi30k] [--steps 12]
"""

from __future__ import annotations

import argparse
import time

import _common
import numpy as np

DATA = _common.REPO.parent / "shared" / "data" / "translation"
TRAIN_PAIRS = 28_998  # Multi30K's training pairs, the two markup-only lines dropped
EVERY = 0.25  # the quick experiment's evaluation interval, in epochs


def bundle(model: str, n_eval: int):
    from raytune_ft.schema import data_settings
    from raytune_ft.tasks import get_task

    data = data_settings(kind="seq2seq", train_file=str(DATA / "train"),
                         eval_file=str(DATA / "test_2016_flickr"), source_lang="de",
                         target_lang="en", max_eval_samples=n_eval, eval_subset="first",
                         max_target_length=64)
    return get_task("seq2seq").load_data(data, model, 64)


def loop_for(model_path: str, data, batch: int, beams: int = 1):
    from raytune_ft.config import TrainConfig
    from raytune_ft.tasks import get_task
    from raytune_ft.training.loop import FineTuneLoop
    from raytune_ft.training.model import load_pretrained

    data.eval.decoding.generation.update(num_beams=beams, max_new_tokens=64)
    if beams > 1:
        data.eval.decoding.generation["length_penalty"] = 1.0
    model = load_pretrained("AutoModelForSeq2SeqLM", model_path, 0)
    hp = TrainConfig(batch_size=batch, max_micro_batch=batch, learning_rate=1e-3,
                     max_epochs=1, eval_batch_size=100)
    return FineTuneLoop(model, data, hp, "eval_bleu", "max", task=get_task("seq2seq"))


def train_rate(loop, steps: int, batch: int) -> tuple[float, float]:
    """(target tokens/s, pairs/s) of `steps` optimizer steps spread through epoch 0."""
    n = len(loop.data.train)
    positions = batch * np.round(np.linspace(0, (n - batch) // batch, steps)).astype(int)
    loop._step(loop.stream.take(0, batch))  # warm-up: allocator, kernels
    tokens, seconds = 0, 0.0
    for position in positions:
        indices = loop.stream.take(int(position), batch)
        tokens += int(loop.data.train.target_lengths[indices].sum())
        started = time.perf_counter()
        loop._step(indices)
        seconds += time.perf_counter() - started
    return tokens / seconds, steps * batch / seconds


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(_common.REPO / "data" / "marian-multi30k"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _common.header("bench_seq2seq")
    data = bundle(args.model, args.eval)
    loop = loop_for(args.model, data, args.batch)
    tokens_per_s, pairs_per_s = train_rate(loop, args.steps, args.batch)
    print(f"train      {tokens_per_s:8.0f} target tokens/s  {pairs_per_s:6.1f} pairs/s  "
          f"(batch {args.batch}, {args.steps} steps, {args.threads} thread(s))", flush=True)
    rows = {}
    for beams in (1, 4):
        loop = loop_for(args.model, bundle(args.model, args.eval), args.batch, beams)
        loop.evaluate()  # warm-up, and the figures below are of a second evaluation
        started = time.perf_counter()
        scores = loop.evaluate()
        seconds = time.perf_counter() - started
        eval_s, predict_s = loop.eval_seconds
        rows[beams] = (seconds, predict_s)
        print(f"evaluate   {args.eval / seconds:8.1f} sentences/s  beams {beams}: "
              f"{seconds:.1f} s, generation {predict_s:.1f} s ({predict_s / eval_s:.0%}); "
              f"BLEU {scores['eval_bleu']:.2f} (of --model), gen_len "
              f"{scores['eval_gen_len']:.1f}", flush=True)
    interval_tokens = EVERY * TRAIN_PAIRS * float(np.mean(data.train.target_lengths))
    train_s = interval_tokens / tokens_per_s
    eval_s, predict_s = rows[1]
    share = predict_s / (train_s + eval_s)
    print(f"share      generation {share:.1%} of a quick-experiment interval: "
          f"{predict_s:.1f} s of ({train_s:.0f} s training {EVERY:g} epoch + {eval_s:.1f} s "
          f"evaluating {args.eval} sentences greedy)")
    greedy, beams = args.eval / rows[1][0], args.eval / rows[4][0]
    _common.final("bench_seq2seq", f"{tokens_per_s:.0f} target tokens/s; {greedy:.1f} / "
                  f"{beams:.1f} sentences/s greedy / 4 beams; generation {share:.1%} of a "
                  "trial", "no target set: figures for issue #28", None)


if __name__ == "__main__":
    main()
