"""Training: the loop, optimisers and schedules, losses, steps, checkpoints, EMA, run logs."""
