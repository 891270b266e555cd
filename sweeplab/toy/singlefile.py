"""A diffusers SD 1.x pipeline folder written as one original-layout (CompVis/A1111) checkpoint file.

This is the inverse of what `from_single_file` runs (diffusers' `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`), so the project can prove single-file loading
with its own weights, offline: `python -m sweeplab.toy.singlefile OUT.safetensors` writes the toy model. Block
positions follow the folder's configs (blocks, layers per block, which blocks attend), not SD 1.5's sizes
as diffusers' script `convert_diffusers_to_original_stable_diffusion.py` hard-codes them.

Loading the file back needs no hub and no original_config YAML: `config=` names a diffusers folder whose
model_index.json, component configs, tokenizer and scheduler stand in for the hub repository diffusers
would fetch for the layout it reads ("v1"), and the weights are mapped by those configs:

    StableDiffusionImg2ImgPipeline.from_single_file(OUT, config=str(toy_model_dir()), local_files_only=True)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
# names inside one block, diffusers -> original, applied to what follows the block's prefix
UNET_RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                     "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_RESNET_NAMES = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

# a diffusers key prefix -> (the original layout's prefix, the names to rename inside that block)
PrefixTable = dict[str, tuple[str, dict[str, str]]]


def write_original_checkpoint(folder: str | Path, out: str | Path) -> Path:
    """Write the UNet, VAE and CLIP text encoder of an SD 1.x diffusers folder as one .safetensors file."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
    from safetensors.torch import save_file

    folder, out = Path(folder), Path(out)
    unet_config, unet = _component(folder, "unet", "diffusion_pytorch_model.safetensors")
    vae_config, vae = _component(folder, "vae", "diffusion_pytorch_model.safetensors")
    text_config, text_encoder = _component(folder, "text_encoder", "model.safetensors")
    if text_config.get("architectures") != ["CLIPTextModel"]:
        raise ValueError(f"{folder / 'text_encoder'} is a {text_config.get('architectures')}; only SD 1.x's "
                         "CLIPTextModel is written in the original layout here")
    unet_layers = {name: (original, {}) for name, original in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    vae_layers = {name: (original, {}) for name, original in DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    vae_original = _renamed(vae, {**vae_layers, **_vae_prefixes(vae_config)}, VAE_PREFIX, "vae")
    checkpoint = {
        **_renamed(unet, {**unet_layers, **_unet_prefixes(unet_config)}, UNET_PREFIX, "unet"),
        **{name: _as_conv_1x1(name, weights) for name, weights in vae_original.items()},
        # transformers >= 5.6 saves CLIPTextModel without its text_model. level; older folders have it
        **{TEXT_ENCODER_PREFIX + name.removeprefix("text_model."): weights for name, weights in text_encoder.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint, str(out))
    return out


def _component(folder: Path, name: str, weights_file: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A component's config and its plain (not variant, not sharded) safetensors weights."""
    from safetensors.torch import load_file

    config, weights = folder / name / "config.json", folder / name / weights_file
    if not (config.is_file() and weights.is_file()):
        raise ValueError(f"{folder} lacks {name}/config.json or {name}/{weights_file}; expected a diffusers SD 1.x "
                         "pipeline folder with plain safetensors weights")
    return json.loads(config.read_text()), load_file(str(weights))


def _unet_prefixes(config: dict) -> PrefixTable:
    """Where each diffusers UNet block sits in the original's input_blocks/middle_block/output_blocks."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError(f"unet layers_per_block {per_block!r}: only one count for every block has an original layout")
    down, up = config["down_block_types"], config["up_block_types"]
    table: PrefixTable = {
        "mid_block.resnets.0.": ("middle_block.0.", UNET_RESNET_NAMES),
        "mid_block.attentions.0.": ("middle_block.1.", {}),
        "mid_block.resnets.1.": ("middle_block.2.", UNET_RESNET_NAMES),
    }
    for i in range(len(down)):  # input_blocks.0 is conv_in; each level is per_block layers, then its downsampler
        for j in range(per_block):
            index = 1 + i * (per_block + 1) + j
            table[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{index}.0.", UNET_RESNET_NAMES)
            table[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{index}.1.", {})
        if i < len(down) - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{(i + 1) * (per_block + 1)}.0.op.", {})
    for i, kind in enumerate(up):  # per_block + 1 layers a level; the upsampler follows the last one's attention
        for j in range(per_block + 1):
            index = i * (per_block + 1) + j
            table[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{index}.0.", UNET_RESNET_NAMES)
            table[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{index}.1.", {})
        if i < len(up) - 1:
            last, position = i * (per_block + 1) + per_block, 2 if kind.startswith("CrossAttn") else 1
            table[f"up_blocks.{i}.upsamplers.0."] = (f"output_blocks.{last}.{position}.", {})
    return table


def _vae_prefixes(config: dict) -> PrefixTable:
    """Where each diffusers VAE block sits in the original's encoder.down/decoder.up (numbered bottom-up)."""
    per_block, levels = config["layers_per_block"], len(config["up_block_types"])
    table: PrefixTable = {}
    for i in range(len(config["down_block_types"])):
        for j in range(per_block):
            table[f"encoder.down_blocks.{i}.resnets.{j}."] = (f"encoder.down.{i}.block.{j}.", VAE_RESNET_NAMES)
        table[f"encoder.down_blocks.{i}.downsamplers.0."] = (f"encoder.down.{i}.downsample.", {})
    for i in range(levels):
        for j in range(per_block + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}."] = (f"decoder.up.{levels - 1 - i}.block.{j}.", VAE_RESNET_NAMES)
        table[f"decoder.up_blocks.{i}.upsamplers.0."] = (f"decoder.up.{levels - 1 - i}.upsample.", {})
    for coder in ("encoder", "decoder"):
        for k in range(2):
            table[f"{coder}.mid_block.resnets.{k}."] = (f"{coder}.mid.block_{k + 1}.", VAE_RESNET_NAMES)
        table[f"{coder}.mid_block.attentions.0."] = (f"{coder}.mid.attn_1.", VAE_ATTENTION_NAMES)
    return table


def _renamed(weights: dict[str, torch.Tensor], table: PrefixTable, prefix: str, what: str) -> dict[str, torch.Tensor]:
    """Every weight under its original name; one the table does not place means the config is not SD 1.x's kind."""
    renamed = {}
    for name, tensor in weights.items():
        block = next((start for start in table if name == start or (start.endswith(".") and name.startswith(start))),
                     None)
        if block is None:
            raise ValueError(f"{what} weight {name} has no place in the original layout; expected an SD 1.x {what}")
        original, inner_names = table[block]
        rest = name[len(block):]
        for inner, inner_original in inner_names.items():
            if rest.startswith(inner + "."):
                rest = inner_original + rest[len(inner):]
                break
        renamed[prefix + original + rest] = tensor
    return renamed


def _as_conv_1x1(name: str, weights: torch.Tensor) -> torch.Tensor:
    """The original VAE's mid-block attention projects with 1x1 convolutions where diffusers has linear layers."""
    if ".mid.attn_1." in name and name.endswith(".weight") and weights.ndim == 2:
        return weights.reshape(*weights.shape, 1, 1)
    return weights


def main(argv: list[str] | None = None) -> int:
    from sweeplab.toy import toy_model_dir

    parser = argparse.ArgumentParser(prog="python -m sweeplab.toy.singlefile", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .safetensors file to write")
    parser.add_argument("--folder", help="a diffusers SD 1.x pipeline folder (default: the toy model)")
    args = parser.parse_args(argv)
    try:
        out = write_original_checkpoint(args.folder or toy_model_dir(), args.out)
    except (OSError, ValueError) as err:
        print(f"sweeplab.toy.singlefile: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size} bytes); load it with model.path={out} model.config=<the folder>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
