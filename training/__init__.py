"""Two-stage MTA training: checkpoints, the frozen-prefix cache and the training loop (torch)."""
