"""One training loop and what it needs: precision, schedules, checkpoints, DDP, logs."""
