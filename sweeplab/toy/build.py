"""Build and locate the embedded ``toy`` model.

The toy model has Stable Diffusion 1.x's architecture (VAE with 8x downsampling,
cross-attention UNet, CLIP text encoder, SD 1.5's noise schedule; the trained UNet predicts v as
SD 2.x does) at a tiny size, so sweeps,
tests and demos run end to end on a laptop CPU without any download. `build_toy_pipeline`
makes it with random weights (the starting point of `sweeplab.toy.train`); the trained
weights ship in the package (`SHIPPED_DIR`) and load with the ordinary ``from_pretrained``
path, exactly like a real checkpoint.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from sweeplab.render import LATENT_RGB_FILE
from sweeplab.toy.scenes import random_scene, render
from sweeplab.toy.tokenizer import MODEL_MAX_LENGTH, build_tokenizer

TOY_VERSION = "trained-v4"
"""Part of every toy trial's identity; bump it whenever the shipped weights change."""
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"

# Stable Diffusion 1.5's scheduler_config.json. PNDM has no clip_sample parameter, but from_config
# keeps the key so that swapping in e.g. DDIM via ``from_config(pipe.scheduler.config)`` behaves like SD 1.5.
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}

_FIT_SEED = 1234
_FIT_SCENES = 24
_FIT_SIZE = 128


def _build_vae() -> AutoencoderKL:
    """Four blocks give SD's 8x downsampling; narrow channels keep 384x384 encode/decode cheap.

    Eight GroupNorm groups, so each group spans 4 to 8 channels, as SD's VAE's 32 groups span 4 to 16 of its
    128 to 512. With one channel per group (trained-v3's 32 groups) every channel is normalised by its own
    spread over the whole image, which erases its absolute level, the colour of a flat background: the decoder
    learnt to carry that level past the norm with a huge spike anchored in the bottom-left corner by the zero
    padding, StyleGAN's "droplet", and painted it as a blob into every output (issue 20).

    The posterior's log-variance is pinned to -20: random weights would give
    logvar ~ 0, so sampled latents would be mostly noise, whereas the real SD
    VAE's posterior is nearly deterministic.
    """
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=384,
    )
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[latent:] = 0.0
        vae.quant_conv.bias[latent:] = -20.0
    return vae


def _build_unet() -> UNet2DConditionModel:
    """The configuration diffusers' own fast Stable Diffusion tests use; sample_size 48 -> 384 px default."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=48,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )


def _build_text_encoder(vocab_size: int, bos_token_id: int, eos_token_id: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=5,
            num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH,
            vocab_size=vocab_size,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
    )


def fit_images() -> torch.Tensor:
    """A fixed set of images in [-1, 1]: scenes and their sketches from their own seed, the kind
    of picture the latent->RGB map has to preview."""
    rng = random.Random(_FIT_SEED)
    scenes = [random_scene(rng) for _ in range(_FIT_SCENES)]
    return to_tensor([render(scene, _FIT_SIZE, sketch=sketch) for scene in scenes for sketch in (False, True)])


def to_tensor(images: np.ndarray | Sequence[Image.Image]) -> torch.Tensor:
    """RGB images, an (N, H, W, 3) uint8 array or a list of PIL images, as an (N, 3, H, W) batch in [-1, 1]."""
    array = images if isinstance(images, np.ndarray) else np.stack([np.asarray(image) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1


def _unscaled_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(images).latent_dist.mode()


def build_toy_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Construct the toy pipeline in memory, deterministically.

    A fixed seed plus a fixed construction order give the same weight bytes in
    every process on the same torch version. The caller's global RNG state is
    restored afterwards, so building never changes what a run draws later. The
    VAE's ``scaling_factor`` is set, like SD's 0.18215, so the latents the UNet
    sees have roughly unit standard deviation; otherwise img2img's noise would
    swamp the image at any strength.
    """
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _build_vae()
        unet = _build_unet()
        text_encoder = _build_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    latent_std = _unscaled_latents(vae, fit_images()).std().item()
    vae.register_to_config(scaling_factor=float(f"{1.0 / latent_std:.3g}"))
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@dataclass(frozen=True)
class LatentRGB:
    """Linear latent -> RGB preview map: ``rgb = latent(h, w, 4) @ factors + bias`` in [-1, 1]."""

    factors: torch.Tensor  # (4, 3)
    bias: torch.Tensor  # (3,)
    residual_rms: float


def fit_latent_rgb(vae: AutoencoderKL) -> LatentRGB:
    """Least-squares fit of scaled VAE latents to `fit_images` area-downsampled to latent resolution.

    The toy VAE has no published preview factors (like InvokeAI's SD 1.x ones), so they are
    fitted here; the latents are the ones the UNet sees (``mode() * scaling_factor``), and
    ``residual_rms`` records how much colour the linear map leaves unexplained.
    """
    images = fit_images()
    latents = _unscaled_latents(vae, images) * vae.config.scaling_factor
    factor = images.shape[-1] // latents.shape[-1]
    targets = F.avg_pool2d(images, factor)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    y = targets.permute(0, 2, 3, 1).reshape(-1, 3).double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    residual = (design @ solution - y).pow(2).mean().sqrt().item()
    return LatentRGB(solution[:-1].float(), solution[-1].float(), residual)


def write_latent_rgb(folder: Path, vae: AutoencoderKL) -> LatentRGB:
    """Fit the latent->RGB preview map on `fit_images` and store it beside the model."""
    fit = fit_latent_rgb(vae)
    # The diagnostic residual is rounded: its last float64 digits vary with reduction order across processes.
    fitted = {"factors": fit.factors.tolist(), "bias": fit.bias.tolist(), "residual_rms": round(fit.residual_rms, 6)}
    (Path(folder) / LATENT_RGB_FILE).write_text(json.dumps(fitted))
    return fit


def toy_model_dir() -> Path:
    """The trained toy pipeline shipped inside the package (diffusers format, safetensors)."""
    if not (SHIPPED_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{SHIPPED_DIR} holds no toy model (no model_index.json); reinstall sweeplab or run "
            "python -m sweeplab.toy.train to train one")
    return SHIPPED_DIR
