"""Training: the loop, its session, optimisers, objective and losses, state, run logs."""
