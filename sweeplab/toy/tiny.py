"""Tiny random-weight pipelines of every model family sweeplab runs, built without any download.

    python -m sweeplab.toy.tiny FAMILY OUT_DIR [--seed N]      # FAMILY: sd, sdxl, sd3, flux

Each family's real architecture at toy width (the layouts of diffusers' own fast tests): SD 1.x's UNet and
CLIP text encoder; SDXL's UNet with ``addition_embed_type="text_time"`` and two CLIP encoders; SD 3.x's MMDiT
with two projected CLIP encoders, a T5 encoder and a 16-channel VAE; FLUX.1-dev's transformer (packed 2x2
latents, distilled guidance) with CLIP, T5 and a 16-channel VAE. Every VAE downsamples 8x as the real ones do,
with the real ``scaling_factor``/``shift_factor``; the schedulers are the families' own hub configs. The
tokenizers are made here: the toy model's CLIP BPE vocabulary (`sweeplab.toy.tokenizer`) and a Unigram T5
vocabulary over the same words (`build_t5_tokenizer`), since the hub's would have to be downloaded.

The folders are what real hub folders look like to a loader: ``model_index.json`` names the family's
text-to-image class (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline``,
``FluxPipeline``) and the family's img2img class loads it with ``from_pretrained(folder)``. Weights are
safetensors; the same seed gives the same bytes. The outputs are noise-like pictures, finite and not blank.

Sizes, as diffusers 0.42's img2img pipelines take them (measured): sd and sdxl run from 8 px, rounding width and
height down to multiples of 8; sd3 needs multiples of 16 (it refuses others) from 16 to 1024 px (its position
embedding); flux runs from 16 px, rounding down to multiples of 16, and must be given height and width (it
defaults to 1024, not to the init image's size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                       FluxTransformer2DModel, PNDMScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                          T5EncoderModel, T5TokenizerFast)

from sweeplab.toy.build import SD15_SCHEDULER_CONFIG
from sweeplab.toy.tokenizer import MODEL_MAX_LENGTH, WORDS, build_tokenizer

T5_MAX_LENGTH = 512  # T5's model_max_length, as FLUX.1's tokenizer_2 has it
CLIP_WIDTH = 32  # hidden size of every tiny CLIP text encoder
T5_WIDTH = 64  # d_model of the tiny T5 encoder: the joint attention width of SD 3 and FLUX
SD3_POSITIONS = 64  # SD 3's pos_embed_max_size: 64 patches of 2 latent pixels, 1024 px at most

# The hub folders' scheduler configs (stabilityai/stable-diffusion-xl-base-1.0, stabilityai/stable-diffusion-3.5-medium,
# black-forest-labs/FLUX.1-dev); the keys left out have the class defaults.
SDXL_SCHEDULER_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                         "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading",
                         "interpolation_type": "linear", "prediction_type": "epsilon", "use_karras_sigmas": False}
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                         "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}

# T5's special tokens in T5's order (ids 0, 1, 2), and the Unigram scores of the pieces: a listed word beats
# spelling it out, and any other text still encodes letter by letter.
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
T5_SPACE = "\u2581"  # SentencePiece's word-start marker
_WORD_SCORE, _CHAR_SCORE = -1.0, -8.0
_CHARS = "".join(chr(code) for code in range(ord("!"), ord("~") + 1))


def build_t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer made in code: Unigram over `WORDS` and printable ASCII, T5's pre-tokenizer and specials.

    It is built exactly as transformers 5 rebuilds a T5 tokenizer from its saved tokenizer.json (no
    normalizer, no byte fallback, no sentinel tokens), so a saved folder loads back to the same token ids.
    """
    vocab = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), (T5_SPACE, -2.0)]
    vocab += [(T5_SPACE + word, _WORD_SCORE) for word in WORDS]
    vocab += [(char, _CHAR_SCORE) for char in _CHARS]
    backend = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=T5_SPACE, prepend_scheme="always", split=True)])
    backend.decoder = decoders.Metaspace(replacement=T5_SPACE, prepend_scheme="always", split=True)
    backend.post_processor = processors.TemplateProcessing(single=["$A", T5_EOS], pair=["$A", T5_EOS, "$B", T5_EOS],
                                                           special_tokens=[(T5_EOS, 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token=T5_EOS, unk_token=T5_UNK, pad_token=T5_PAD,
                           extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _clip_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """Two layers at least: SD 3 and SDXL read the penultimate hidden state."""
    return CLIPTextConfig(hidden_size=CLIP_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          projection_dim=CLIP_WIDTH, max_position_embeddings=MODEL_MAX_LENGTH,
                          vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _t5_encoder(tokenizer: T5TokenizerFast) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None = None,
         quant_convs: bool = True) -> AutoencoderKL:
    """Four levels, 8x downsampling like every real family's VAE, with the family's latent scaling."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                         layers_per_block=1, norm_num_groups=8, latent_channels=latent_channels, sample_size=64,
                         scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=quant_convs,
                         use_post_quant_conv=quant_convs)


def _sd() -> StableDiffusionPipeline:
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=CLIP_WIDTH,
                                attention_head_dim=4, norm_num_groups=8)
    return StableDiffusionPipeline(
        vae=_vae(4, 0.18215), text_encoder=CLIPTextModel(_clip_config(tokenizer)), tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def _sdxl() -> StableDiffusionXLPipeline:
    """Six micro-conditioning time ids (the base model's; the refiner's aesthetic score makes five)."""
    tokenizer = build_tokenizer()
    time_embed_width = 8
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=time_embed_width, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=6 * time_embed_width + CLIP_WIDTH,
                                cross_attention_dim=2 * CLIP_WIDTH, norm_num_groups=8)
    config = _clip_config(tokenizer)
    return StableDiffusionXLPipeline(
        vae=_vae(4, 0.13025), text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer, tokenizer_2=build_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG), force_zeros_for_empty_prompt=True)


def _sd3() -> StableDiffusion3Pipeline:
    """The CLIP states (2 x 32 wide) are padded to T5's width (64) as in SD 3; pooled: both projections."""
    tokenizer, t5_tokenizer = build_tokenizer(), build_t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=T5_WIDTH,
                                        caption_projection_dim=32, pooled_projection_dim=2 * CLIP_WIDTH,
                                        pos_embed_max_size=SD3_POSITIONS)
    config = _clip_config(tokenizer)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG),
        vae=_vae(16, 1.5305, 0.0609, quant_convs=False), text_encoder=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer, text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=build_tokenizer(),
        text_encoder_3=_t5_encoder(t5_tokenizer), tokenizer_3=t5_tokenizer)


def _flux() -> FluxPipeline:
    """FLUX.1-dev's layout: guidance embedded (distilled guidance), 16 latent channels packed 2x2 into 64."""
    tokenizer, t5_tokenizer = build_tokenizer(), build_t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                         pooled_projection_dim=CLIP_WIDTH, guidance_embeds=True,
                                         axes_dims_rope=(4, 4, 8))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG),
        vae=_vae(16, 0.3611, 0.1159, quant_convs=False), text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(t5_tokenizer), tokenizer_2=t5_tokenizer, transformer=transformer)


_BUILDERS = {"sd": _sd, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux}
FAMILIES = tuple(_BUILDERS)
"""What `build_tiny_pipeline` makes: SD 1.x, SDXL, SD 3.x, FLUX.1."""


def build_tiny_pipeline(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build FAMILY's tiny pipeline with seeded random weights and save it as a diffusers folder at out_dir.

    out_dir must be new or empty, so a folder never mixes two builds. The components are made in a fixed
    order under one seed, and the caller's global RNG state is restored afterwards.
    """
    if family not in _BUILDERS:
        raise ValueError(f"family: unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"OUT_DIR: {out_dir} exists and is not an empty folder; name a new or empty folder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe: DiffusionPipeline = _BUILDERS[family]()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr, as sweeplab's own errors do."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> None:
    parser = _OneLineParser(prog="python -m sweeplab.toy.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("family", metavar="FAMILY", choices=FAMILIES, help=f"one of {', '.join(FAMILIES)}")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="a new or empty folder for the pipeline")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0); the same seed, the same bytes")
    args = parser.parse_args(argv)
    try:
        folder = build_tiny_pipeline(args.family, args.out_dir, args.seed)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    print(folder)


if __name__ == "__main__":
    main()
