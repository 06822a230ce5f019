"""What the loop reports itself at every evaluation, besides its task's own metrics.

No torch here: the config (which metrics a scheduler may watch) and the analysis (the column
types of result tables) read these names without loading the loop.
"""

from __future__ import annotations

# Reported at every evaluation, in report order; a scheduler may watch any of them.
# eval_loss is the task's summed loss over the eval split / its examples, train_loss the same
# over the interval's training samples.
LOOP_METRICS: dict[str, type] = {
    "eval_loss": float,
    "train_loss": float,
    "lr": float,  # the head group's scheduled learning rate
    "lr_min_group": float,  # the smallest group's (layer-wise decay)
    "batch_size": int,
    "epoch": float,
    "samples_seen": int,
    "step": int,
    "samples_per_s": float,
    # wall seconds of the interval: training, evaluating, and of the evaluation the task's
    # predictions (a generating task: decoding), so the share of a trial's time spent
    # generating is sum(eval_predict_s) / time_total_s
    "train_s": float,
    "eval_s": float,
    "eval_predict_s": float,
}
# Reported too, but flags rather than metrics: no scheduler watches them.
LOOP_FLAGS: dict[str, type] = {"diverged": bool, "skipped_steps": int}
WORST_LOSS = 1e9  # the worst finite value reported for an unbounded loss
# Deployment figures (`training.deployment`), measured once per trial after its first
# evaluation and reported with every result after it: an objective may minimise them.
DEPLOYMENT_METRICS: dict[str, type] = {
    "param_count": int,  # every parameter of the model
    "trainable_param_count": int,  # those with requires_grad (frozen layers, adapters)
    "checkpoint_mb": float,  # the trial's checkpoint folder on disk, 10^6 bytes
    "model_mb": float,  # the weights alone (what export ships; LoRA: adapters + head), 10^6 B
    "latency_ms_b1": float,  # median ms per example, one example per forward pass
    "latency_ms_eval_batch": float,  # median ms per example at train.eval_batch_size
    "latency_eval_batch": int,  # the batch size of that figure (smaller eval split: all)
    "latency_threads": int,  # torch's intra-op threads while measuring
}
DEPLOYMENT_INFO: dict[str, type] = {"latency_device": str}  # cpu, cuda:0 (its name) ...
