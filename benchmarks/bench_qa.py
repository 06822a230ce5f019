"""Question answering on SQuAD windows with the packaged MiniLM: training and evaluation
windows per second, and the share of a trial's time spent turning eval logits into answers
and scores (post-processing: `QuestionAnswering.compute_metrics`), which must not dominate.

One `FineTuneLoop` on the settings of experiments/squad_quick.yaml (windows of `--max-length`
tokens sharing `--stride`, batch `--batch`, `--threads` torch threads like a trial of that many
CPUs): it trains `--train-windows` windows (timed per step, the first step left out as
warm-up), then evaluates `--eval-questions` dev questions `--evals` times, timing the whole
evaluation and, inside it, the post-processing. The share is reported for one evaluation
interval of the experiment as it is configured (`--interval-windows` trained windows between
evaluations): post-processing / (training the interval + one evaluation).

    python benchmarks/bench_qa.py [--train-windows 256] [--eval-questions 400] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import _common

SQUAD = _common.REPO.parent / "shared" / "data" / "squad"
SHARE_TARGET = 0.05  # post-processing's share of an interval


def build(args):
    from raytune_ft.config import TrainConfig
    from raytune_ft.schema import data_settings
    from raytune_ft.tasks import get_task
    from raytune_ft.training.loop import FineTuneLoop

    task = get_task("question_answering")
    data = data_settings(kind="question_answering", train_file=str(SQUAD / "train.json"),
                      eval_file=str(SQUAD / "dev.json"), max_train_samples=args.train_questions,
                      max_eval_samples=args.eval_questions, doc_stride=args.stride)
    path = _common.model_path()
    started = time.perf_counter()
    bundle = task.load_data(data, path, args.max_length)
    encode_s = time.perf_counter() - started
    hp = TrainConfig(batch_size=args.batch, max_micro_batch=args.batch, learning_rate=1e-4,
                     max_epochs=1, eval_every_epochs=1, eval_batch_size=64)
    loop = FineTuneLoop(task.load_model(path, bundle.label_names, 0), bundle, hp, "eval_f1",
                        task=task)
    return task, bundle, loop, encode_s


def no_answer_baseline(bundle) -> dict:
    """The official scores of answering every eval question with nothing (the scorer the
    trials use)."""
    from raytune_ft.tasks._qa_answers import official_scores

    split = bundle.eval
    return official_scores([""] * split.source_examples, split.golds, split.has_answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-questions", type=int, default=2000)
    parser.add_argument("--eval-questions", type=int, default=400)
    parser.add_argument("--train-windows", type=int, default=256)
    parser.add_argument("--interval-windows", type=int, default=1120,
                        help="windows trained between evaluations in the experiment")
    parser.add_argument("--evals", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    _common.header("bench_qa")
    import torch

    torch.set_num_threads(args.threads)
    task, bundle, loop, encode_s = build(args)
    print(f"# data: {len(bundle.train)} train windows of {args.train_questions} questions, "
          f"{len(bundle.eval)} eval windows of {args.eval_questions} questions (max_length "
          f"{args.max_length}, stride {args.stride}); encoded in {encode_s:.1f} s")
    print(f"# threads {args.threads}, batch {args.batch}, commit {_common.git_commit()}")
    steps, seconds = [], 0.0
    loop.model.train()
    while loop.state.samples_seen < args.train_windows + args.batch:
        indices = loop.stream.take(loop.state.samples_seen, args.batch)
        started = time.perf_counter()
        loop._step(indices)
        steps.append(time.perf_counter() - started)
    seconds = sum(steps[1:])  # the first step warms up
    train_rate = args.batch * (len(steps) - 1) / seconds
    post = []
    original = task.compute_metrics

    def timed(data, predictions):
        started = time.perf_counter()
        out = original(data, predictions)
        post.append(time.perf_counter() - started)
        return out

    task.compute_metrics = timed
    evals = []
    for _ in range(args.evals):
        started = time.perf_counter()
        scores = loop.evaluate()
        evals.append(time.perf_counter() - started)
    task.compute_metrics = original
    eval_s, post_s = min(evals), min(post)
    baseline = no_answer_baseline(bundle)
    eval_rate = len(bundle.eval) / (eval_s - post_s)
    interval = args.interval_windows / train_rate + eval_s
    share = post_s / interval
    print(f"training     {train_rate:.2f} windows/s ({len(steps) - 1} steps of {args.batch})")
    print(f"evaluation   {eval_rate:.2f} windows/s forward ({len(bundle.eval)} windows, "
          f"best of {args.evals}: {eval_s:.2f} s with post-processing {post_s:.3f} s; "
          f"eval_f1 {scores['eval_f1']:.2f})")
    print(f"baseline     always no answer on the same {args.eval_questions} questions: exact "
          f"{baseline['exact']:.2f}, f1 {baseline['f1']:.2f}")
    print(f"interval     {args.interval_windows} windows trained + one evaluation = "
          f"{interval:.1f} s; post-processing {100 * share:.3g}% of it")
    _common.final("bench_qa", f"train {train_rate:.2f} windows/s, eval {eval_rate:.2f} "
                  f"windows/s, post-processing {100 * share:.3g}% of an interval",
                  f"post-processing <= {100 * SHARE_TARGET:.0f}%", share <= SHARE_TARGET)


if __name__ == "__main__":
    main()
