"""Stage train: the SPADE GAN (model parts, losses, training state and loop, checkpoints) and
what its generator file carries (style bank, grey levels, speckle)."""
