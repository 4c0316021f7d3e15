"""The label-budget curve: what the synthetic data is worth in real labels (one GAN per patient
subset of the train split, its synthetic set, and U-Nets on every evaluate setting per budget)."""
