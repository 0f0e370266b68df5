"""Activation-aware weight scaling and clipping, searched on a PyTorch model."""
