"""Stage-one encoders: tokenizers (MaskGIT-ELT) and autoencoders (DiT-ELT), pixel, scripted and diffusers-backed."""
