"""Turning latents into pictures: the start image, per-step previews and latent strips.

Two methods: a linear latent->RGB map (fast, what InvokeAI's intermediates used) or a
full VAE decode (faithful, slower). The map for the toy VAE is fitted by least squares;
real SD families use published factors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

LATENT_RGB_FILE = "latent_rgb.json"

# rgb = latent(h, w, 4) @ factors + bias, then ((rgb + 1) / 2).clamp(0, 1)
SD1_LATENT_RGB = (
    [[0.3444, 0.1385, 0.0670], [0.1247, 0.4027, 0.1494], [-0.3192, 0.2513, 0.2103], [-0.1307, -0.1874, -0.7445]],
    [0.0, 0.0, 0.0],
)  # InvokeAI's SD 1.x/2.x preview map
SDXL_LATENT_RGB = (
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
    [0.1084, -0.0175, -0.0011],
)  # ComfyUI's SDXL preview map


class LatentRenderer:
    """Renders UNet-space latents [4, h, w] as RGB images with one fixed method."""

    def __init__(self, method: str, pipe, latent_rgb: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.method = method
        self.pipe = pipe
        if method == "linear":
            factors, bias = latent_rgb if latent_rgb is not None else default_latent_rgb(pipe)
            self.factors = torch.as_tensor(factors, dtype=torch.float32)
            self.bias = torch.as_tensor(bias, dtype=torch.float32)

    def render(self, latent: torch.Tensor) -> Image.Image:
        if self.method == "vae":
            return self._decode(latent)
        rgb = latent.float().permute(1, 2, 0) @ self.factors + self.bias
        return _to_image(rgb)

    def strip(self, latents: torch.Tensor, tile_size: int) -> Image.Image:
        """One tile per latent, left to right, like InvokeAI's *.steps.gravity.png."""
        tiles = [self.render(latent).resize((tile_size, tile_size), Image.Resampling.NEAREST) for latent in latents]
        strip = Image.new("RGB", (tile_size * max(1, len(tiles)), tile_size))
        for index, tile in enumerate(tiles):
            strip.paste(tile, (index * tile_size, 0))
        return strip

    @torch.no_grad()
    def _decode(self, latent: torch.Tensor) -> Image.Image:
        vae = self.pipe.vae
        scaled = latent.unsqueeze(0).to(vae.device, vae.dtype) / vae.config.scaling_factor
        decoded = vae.decode(scaled).sample[0].float().cpu()
        return _to_image(decoded.permute(1, 2, 0))


def read_latent_rgb(model_dir: str | Path) -> tuple | None:
    """A fitted map shipped beside a model as latent_rgb.json ({"factors": 4x3, "bias": 3})."""
    path = Path(model_dir) / LATENT_RGB_FILE
    if not path.is_file():
        return None
    fitted = json.loads(path.read_text())
    return fitted["factors"], fitted["bias"]


def default_latent_rgb(pipe) -> tuple:
    """Published factors by model family, for models that ship no fitted map."""
    if pipe.vae.config.latent_channels != 4:
        raise ValueError("preview.method=linear knows no latent->RGB map for this model; use preview.method=vae")
    return SDXL_LATENT_RGB if "XL" in type(pipe).__name__ else SD1_LATENT_RGB


def _to_image(rgb_hwc: torch.Tensor) -> Image.Image:
    pixels = ((rgb_hwc + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")
