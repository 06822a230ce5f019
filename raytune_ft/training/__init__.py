"""Fine-tuning without Ray: model loading and parameter groups, learning-rate and batch-size
schedules, sample order and batching, and the loop that trains one trial."""
