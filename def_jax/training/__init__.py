"""Training workflows: G_φ and ε_θ training loops, checkpoints, logging."""
