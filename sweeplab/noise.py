"""Seed variations (InvokeAI -v / -V): the trial's noise slerped towards other seeds' noise.

diffusers' img2img draws two tensors from the trial's generator: the VAE posterior sample,
then the noise it adds to the init latents. `img2img_noise` reproduces that second draw, so a
variation can be applied as a correction of the noise the pipeline already added.
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
    seed: int
    with_variations: tuple[tuple[int, float], ...] = ()
    variation_amount: float = 0.0
    variation_seed: int | None = None

    def varied(self, like: torch.Tensor, vae_dtype: torch.dtype) -> torch.Tensor:
        """with_variations applied in order, then variation_amount towards variation_seed."""
        noise = img2img_noise(self.seed, like, vae_dtype)
        steps = list(self.with_variations)
        if self.variation_amount > 0:
            steps.append((self.variation_seed, self.variation_amount))
        for seed, weight in steps:
            noise = slerp(weight, noise, img2img_noise(seed, like, vae_dtype))
        return noise

    def correction(self, like: torch.Tensor, vae_dtype: torch.dtype) -> torch.Tensor:
        """Varied minus original noise: what to add, scaled by the scheduler, to the start latent."""
        return self.varied(like, vae_dtype) - img2img_noise(self.seed, like, vae_dtype)
