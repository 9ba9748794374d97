"""The method: the looped backbone, ILSD, loop schedules, classifier-free guidance, the diffusion process and FLOPs."""
