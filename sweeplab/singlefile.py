"""Single-file checkpoints (the original CompVis/A1111/ComfyUI layout): which model family a file holds.

Only the safetensors JSON header is read, so a checkpoint of many GB answers in milliseconds. The layout is
classified by diffusers' own `infer_diffusers_model_type`, the function `from_single_file` itself uses, fed
meta tensors (shape and dtype, no data) made from the header: its precedence over the many layouts it knows
(FLUX.2 and Chroma look like FLUX.1, for one) stays diffusers'. Importing it costs what importing any diffusers
pipeline costs; a process that then loads the checkpoint pays that once either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sweeplab import console
from sweeplab.errors import ConfigError
from sweeplab.safetensorsheader import read_safetensors_header

# diffusers' name for a layout -> sweeplab's model family; any other layout is refused
FAMILY_OF_MODEL_TYPE = {
    "v1": "sd", "v2": "sd", "inpainting": "sd", "inpainting_v2": "sd",
    "xl_base": "sdxl", "xl_refiner": "sdxl", "xl_inpaint": "sdxl", "playground-v2-5": "sdxl",
    "sd3": "sd3", "sd35_medium": "sd3", "sd35_large": "sd3",
    "flux-dev": "flux", "flux-schnell": "flux",
}
KNOWN_FAMILIES = "sd (SD 1.x/2.x), sdxl (SDXL base and refiner), sd3 (SD 3 and 3.5), flux (FLUX.1 dev and schnell)"
# diffusers calls every file it does not recognise "v1"; an SD 1.x file has the UNet's first convolution
SD_UNET_FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"
# safetensors dtype names -> torch dtype names; the meta tensors carry them, diffusers reads only shapes today
TORCH_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class SingleFileLayout:
    """What a single-file checkpoint holds, as far as its header tells."""

    family: str  # sweeplab's model family: sd, sdxl, sd3 or flux
    model_type: str  # diffusers' name (v1, v2, xl_refiner, sd35_large, flux-schnell, ...): the hub config it uses


def checkpoint_header(path: Path, where: str) -> dict:
    """A checkpoint's safetensors header, naming at least one tensor."""
    header = read_safetensors_header(path, where)
    if not set(header) - {"__metadata__"}:  # diffusers would look the model type up on the hub: a DNS error offline
        raise ConfigError(f"{where} holds no tensors (an empty safetensors header); expected a Stable Diffusion "
                          "checkpoint")
    return header


def single_file_layout(path: str | Path) -> SingleFileLayout:
    """The family and diffusers' layout name of a .safetensors checkpoint, from its header alone."""
    where = f"model.path: '{path}'"
    header = checkpoint_header(Path(path), where)
    console.quiet_library_notices()  # importing diffusers' loaders prints transformers' notices nobody can act on
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        model_type = infer_diffusers_model_type(_HeaderTensors(header, where))
        seen = f"diffusers reads it as '{model_type}'"
    except ConfigError:
        raise
    # a branch that wanted a key or shape the file lacks; UnboundLocalError: a shape no branch names (an odd SD3)
    except (LookupError, TypeError, ValueError, RuntimeError, NotImplementedError, UnboundLocalError):
        model_type, seen = None, "diffusers cannot place its keys and shapes"
    if model_type == "v1" and SD_UNET_FIRST_CONV not in header:
        model_type, seen = None, "no Stable Diffusion, SDXL, SD3 or FLUX keys"
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise ConfigError(f"{where} is not a checkpoint of a family sweeplab knows ({seen}); known: {KNOWN_FAMILIES}")
    return SingleFileLayout(family, model_type)


def single_file_family(path: str | Path) -> str:
    """The family (sd, sdxl, sd3 or flux) of a .safetensors checkpoint, from its header alone."""
    return single_file_layout(path).family


class _HeaderTensors(Mapping):
    """A safetensors header seen as a state dict of meta tensors, each made only when diffusers looks at it."""

    def __init__(self, header: dict, where: str):
        self._entries = {key: entry for key, entry in header.items() if key != "__metadata__"}
        self._where = where

    def __getitem__(self, key: str):
        import torch

        entry = self._entries[key]
        try:
            dtype = getattr(torch, TORCH_DTYPE_NAMES.get(entry["dtype"], "uint8"))
            return torch.empty([int(size) for size in entry["shape"]], dtype=dtype, device="meta")
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise ConfigError(f"{self._where} is not a valid .safetensors file (the entry for {key})") from None

    def __contains__(self, key: object) -> bool:  # without making a tensor, as Mapping's own would
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
