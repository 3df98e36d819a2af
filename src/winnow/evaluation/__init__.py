"""Evidence against retraining: leave-one-out, groups, LDS, mislabel detection, Theorem 1 (head vs model)."""
