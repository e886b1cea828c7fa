"""The data layer: tokenisation, augmentation, the token cache and the grain pipeline."""
