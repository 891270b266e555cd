"""Seed variations (InvokeAI -v / -V): the trial's noise slerped towards other seeds' noise.

Every diffusers img2img pipeline draws two tensors from the trial's generator: the VAE posterior
sample, then the noise it adds to the init latents. The trial's scheduler sees that noise;
`img2img_noise` reproduces the second draw for the other seeds a variation moves towards, so a
variation is applied as a correction of the noise the pipeline already added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

DOT_THRESHOLD = 0.9995


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation, linear when the two are nearly parallel (as InvokeAI does)."""
    dot = torch.sum(v0 * v1 / (v0.norm() * v1.norm()))
    if dot.abs() > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(dot)
    return (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)


def img2img_noise(seed: int, like: torch.Tensor, vae_dtype: torch.dtype) -> torch.Tensor:
    """The noise img2img adds for `seed`: the generator's second draw, after the VAE sample."""
    generator = torch.Generator("cpu").manual_seed(seed)
    randn_tensor(like.shape, generator=generator, device=like.device, dtype=vae_dtype)
    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class NoiseVariation:
    with_variations: tuple[tuple[int, float], ...] = ()
    variation_amount: float = 0.0
    variation_seed: int | None = None

    def varied(self, noise: torch.Tensor, vae_dtype: torch.dtype) -> torch.Tensor:
        """The trial's own noise with with_variations applied in order, then variation_amount towards variation_seed."""
        steps = list(self.with_variations)
        if self.variation_amount > 0:
            steps.append((self.variation_seed, self.variation_amount))
        for seed, weight in steps:
            noise = slerp(weight, noise, img2img_noise(seed, noise, vae_dtype))
        return noise

    def correction(self, noise: torch.Tensor, vae_dtype: torch.dtype) -> torch.Tensor:
        """Varied minus drawn noise: what to add, noised by the scheduler, to the start latent."""
        return self.varied(noise, vae_dtype) - noise
