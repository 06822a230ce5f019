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
}
# Reported too, but flags rather than metrics: no scheduler watches them.
LOOP_FLAGS: dict[str, type] = {"diverged": bool, "skipped_steps": int}
WORST_LOSS = 1e9  # the worst finite value reported for an unbounded loss
