"""A Stable Diffusion 1.5-architecture pipeline with random weights, built without any download.

The component configs are SD 1.5's own (runwayml/stable-diffusion-v1-5's config.json files, written out):
UNet 320/640/1280/1280 with 768-wide cross-attention, the CLIP ViT-L/14 text encoder, the SD VAE, the
PNDM scheduler (sweeplab.toy.build.SD15_SCHEDULER_CONFIG). The tokenizer is the toy model's own CLIP
tokenizer (sweeplab.toy.tokenizer), since CLIP's vocabulary would have to be downloaded. `tiny=True`
shrinks every width and depth for a CPU test of the scripts that use it.

Random weights at PyTorch's default initialisation can overflow in float16 deep inside the UNet and
VAE; every conv and linear weight is scaled by `init_scale` (checked by gpu_check.py, which prints
the share of non-finite output values).
"""

from __future__ import annotations

import copy

SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L_TEXT = {  # openai/clip-vit-large-patch14's text_config; token ids come from the toy tokenizer
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}
TINY = {  # the same architecture, small enough for a CPU test in seconds
    "unet": {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": 4, "cross_attention_dim": 32,
             "layers_per_block": 1, "norm_num_groups": 16, "sample_size": 8},
    "vae": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 16, "sample_size": 64},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
             "projection_dim": 32},
}


def component_configs(tiny: bool = False) -> dict[str, dict]:
    """The three model configs, SD 1.5's or their tiny version."""
    configs = {"unet": copy.deepcopy(SD15_UNET), "vae": copy.deepcopy(SD15_VAE), "text": copy.deepcopy(CLIP_L_TEXT)}
    if tiny:
        for name, changes in TINY.items():
            configs[name].update(changes)
    return configs


def scale_init(model, init_scale: float):
    """Multiply every conv and linear weight by init_scale, so float16 activations stay in range."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.mul_(init_scale)
    return model


def build_pipeline(seed: int = 0, tiny: bool = False, init_scale: float = 0.5, device: str = "cpu"):
    """A StableDiffusionPipeline with seeded random weights, float32, built directly on `device`."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sweeplab.toy.build import SD15_SCHEDULER_CONFIG
    from sweeplab.toy.tokenizer import build_tokenizer

    configs = component_configs(tiny)
    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(**configs["text"], bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = scale_init(UNet2DConditionModel(**configs["unet"]), init_scale)
        vae = scale_init(AutoencoderKL(**configs["vae"]), init_scale)
        text_encoder = CLIPTextModel(text_config)  # transformers initialises it small already (std 0.02)
    return StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
