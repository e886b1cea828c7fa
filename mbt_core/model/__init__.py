"""The model layer: MBT (Linen), its FLOP counter, official checkpoints and ViT initialisation."""
