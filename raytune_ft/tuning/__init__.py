"""Ray Tune around the loop: search spaces and schedulers, the trainable, the runner that
starts or joins Ray, resume, and preset runs (replay, confirm)."""
