"""Elastic Looped Transformers: looped MaskGIT/DiT generators with Intra-Loop Self-Distillation."""

__version__ = "0.1.0"
