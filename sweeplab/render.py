"""Turning latents into pictures: the start image, per-step previews and latent strips.

Two methods: a linear latent->RGB map (fast, what InvokeAI's intermediates used) or a
full VAE decode (faithful, slower). The map for the toy VAE is fitted by least squares;
real families use the published factors their `sweeplab.families` entry holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

LATENT_RGB_FILE = "latent_rgb.json"


class LatentRenderer:
    """Renders the denoiser's latents [channels, h, w] as RGB images with one fixed method."""

    def __init__(self, method: str, vae, latent_rgb: tuple):
        self.method = method
        self.vae = vae  # decodes for method "vae"
        if method == "linear":
            factors, bias = latent_rgb  # rgb = latent(h, w, channels) @ factors + bias
            self.factors = torch.as_tensor(factors, dtype=torch.float32)
            self.bias = torch.as_tensor(bias, dtype=torch.float32)

    def render_all(self, latents: torch.Tensor) -> list[Image.Image]:
        """One image per latent of a stack [n, channels, h, w]: the linear map as one product for all of them
        (the same pixels as one at a time, in half the time of a trial's 21 separate renders)."""
        if self.method == "vae":
            return [self._decode(latent) for latent in latents]
        rgb = latents.float().permute(0, 2, 3, 1) @ self.factors + self.bias
        return [Image.fromarray(pixels, "RGB") for pixels in _to_pixels(rgb)]

    @staticmethod
    def strip(images: list[Image.Image], tile_size: int) -> Image.Image:
        """One tile per rendered latent, left to right, like InvokeAI's *.steps.gravity.png."""
        strip = Image.new("RGB", (tile_size * max(1, len(images)), tile_size))
        for index, image in enumerate(images):
            strip.paste(image.resize((tile_size, tile_size), Image.Resampling.NEAREST), (index * tile_size, 0))
        return strip

    @torch.no_grad()
    def _decode(self, latent: torch.Tensor) -> Image.Image:
        vae = self.vae
        scaled = latent.unsqueeze(0).to(vae.device, vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):  # SD 3.x and FLUX VAEs centre their latents
            scaled = scaled + vae.config.shift_factor
        decoded = vae.decode(scaled).sample[0].float().cpu()
        return Image.fromarray(_to_pixels(decoded.permute(1, 2, 0)), "RGB")


def read_latent_rgb(model_dir: str | Path) -> tuple | None:
    """A fitted map shipped beside a model as latent_rgb.json ({"factors": 4x3, "bias": 3})."""
    path = Path(model_dir) / LATENT_RGB_FILE
    if not path.is_file():
        return None
    fitted = json.loads(path.read_text())
    return fitted["factors"], fitted["bias"]


def _to_pixels(rgb: torch.Tensor) -> np.ndarray:
    """uint8 pixels of RGB values in [-1, 1], channels last (one image or a stack)."""
    return ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
