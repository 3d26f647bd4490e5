"""Weights in and out: official MAE, timm and mimkit checkpoints."""
