"""Training, evaluation and distillation loops."""
