"""Samplers: MaskGIT parallel decoding, the diffusion samplers, per-sample early exit and budgeted generation."""
