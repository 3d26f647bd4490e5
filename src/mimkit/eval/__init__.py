"""What a backbone learned: features, kNN, linear probe, fine-tuning, Q-score."""
