"""LoRA adapters as sweep axes: `lora=[style.safetensors:0.8]` checked before any model loads, then applied
to a loaded model through diffusers' LoRA loaders (peft) without reloading it.

`parse_loras` reads only files: existence, suffix, the safetensors header, and the file's sha256, which is
the LoRA's identity in a trial's config hash. `LoraAdapters` belongs to one loaded model: the adapters live
on the model's shared modules, so before each pipeline call it loads, weighs and deletes adapters until
exactly the trial's set is active, and a trial never sees the previous trial's LoRA.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from sweeplab.errors import ConfigError
from sweeplab.safetensorsheader import read_safetensors_header

# Key endings that mark one adapted layer (its down/A matrix) in the LoRA layouts diffusers reads:
# peft/diffusers (lora_A), kohya (lora_down), older diffusers attention processors (to_q_lora.down).
LAYER_KEY_ENDINGS = ("lora_A.weight", "lora_down.weight", "lora.down.weight", "lora_linear_layer.down.weight")
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class LoraWeights:
    """One entry of `lora`: a checked LoRA file and the scale it is applied at."""

    path: str  # absolute path of the .safetensors file
    sha256: str  # of the file's bytes: the LoRA's identity (the same file anywhere hashes alike)
    scale: float  # diffusers' adapter weight; 0 leaves the model's output unchanged
    layers: int = field(compare=False)  # adapted layers the file holds, checked against what loads

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def label(self) -> str:
        """`style.safetensors:0.8`: the entry as the `lora` param and run names show it."""
        return f"{self.name}:{self.scale:g}"


def parse_loras(entries: list[str], default_scale: float) -> tuple[LoraWeights, ...]:
    """The `lora` list checked from the files alone; an entry without `:scale` takes `lora_scale`."""
    if entries and importlib.util.find_spec("peft") is None:
        raise ConfigError("lora: loading LoRA files needs the peft package; pip install 'sweeplab[lora]'")
    parsed = [_parse_entry(str(entry), default_scale) for entry in entries]
    seen: dict[str, str] = {}
    for weights in parsed:
        if weights.sha256 in seen:
            raise ConfigError(f"lora: {weights.name} holds the same weights as {seen[weights.sha256]}, listed "
                              "before; list each LoRA once, with the scale you want")
        seen[weights.sha256] = weights.name
    return tuple(parsed)


def _parse_entry(entry: str, default_scale: float) -> LoraWeights:
    path_text, scale = _split_scale(entry, default_scale)
    path = Path(path_text).expanduser().resolve()
    where = f"lora: '{path_text}'"
    if path.suffix != ".safetensors":
        raise ConfigError(f"{where} is not a .safetensors file; allowed: PATH.safetensors or "
                          "PATH.safetensors:SCALE (pickle LoRA files can run code and are not loaded)")
    if not path.is_file():
        raise ConfigError(f"{where} does not exist; expected a LoRA .safetensors file")
    header = read_safetensors_header(path, where)
    layers = sum(1 for key in header if key.endswith(LAYER_KEY_ENDINGS))
    if not layers:
        raise ConfigError(f"{where} holds no LoRA layers (no tensor named *.lora_A.weight or *.lora_down.weight); "
                          "expected a LoRA, not a model checkpoint")
    stat = path.stat()
    return LoraWeights(str(path), _file_sha256(str(path), stat.st_size, stat.st_mtime_ns), scale, layers)


def _split_scale(entry: str, default_scale: float) -> tuple[str, float]:
    """`path:scale` -> (path, scale); the text after the last colon is a scale only if it is a number, so
    `C:\\loras\\style.safetensors` stays a path."""
    path, sep, scale_text = entry.rpartition(":")
    if not sep:
        return entry, default_scale
    try:
        scale = float(scale_text)
    except ValueError:
        return entry, default_scale
    if not math.isfinite(scale):
        raise ConfigError(f"lora: '{entry}' has the scale {scale_text}; allowed a finite number, e.g. "
                          "style.safetensors:0.8")
    return path, scale


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per version of it (size and mtime in the key): a sweep checks every trial's LoRA."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LoraAdapters:
    """The LoRA adapters loaded into one model's modules, set to exactly a trial's before each pipeline call.

    Adapters are keyed by file content. Trials run ordered by their LoRA files (sweep.cost_key), so each
    file loads once per run of trials that use it; adapters the trial does not use are deleted, and a trial
    without LoRA gets the model's own layers back (diffusers' unload_lora_weights), not a zero-weighted adapter.
    """

    def __init__(self, pipe, model_title: str):
        self._pipe = pipe  # the model's img2img pipeline; every pipeline of the model shares its modules
        self._model_title = model_title  # for errors: "Stable Diffusion 1.x/2.x"
        self._names: dict[str, str] = {}  # sha256 -> adapter name, for the adapters loaded now

    def activate(self, loras: tuple[LoraWeights, ...]) -> None:
        wanted = {weights.sha256 for weights in loras}
        stale = [self._names.pop(sha) for sha in list(self._names) if sha not in wanted]
        if not loras:
            if stale:
                self._pipe.unload_lora_weights()
            return
        if stale:
            self._pipe.delete_adapters(stale)
        for weights in loras:
            if weights.sha256 not in self._names:
                self._names[weights.sha256] = self._load(weights)
        self._pipe.set_adapters([self._names[weights.sha256] for weights in loras],
                                adapter_weights=[weights.scale for weights in loras])

    def _load(self, weights: LoraWeights) -> str:
        """Load one file as an adapter; a LoRA whose layers are not all this model's fails in one line."""
        name = f"lora_{weights.sha256[:16]}"
        try:
            with warnings.catch_warnings():  # peft's notice that a second adapter joins the first: lora=[a,b] asks that
                warnings.filterwarnings("ignore", "Already found a `peft_config` attribute", UserWarning)
                self._pipe.load_lora_weights(weights.path, adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as err:  # peft's size mismatch, diffusers' format checks
            self._discard(name)
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"lora: {weights.name} does not fit this {self._model_title} model: {first_line}; "
                              "a LoRA made for another model family or model?") from err
        matched = self._layers_holding(name)
        if matched < weights.layers:
            self._discard(name)
            raise ConfigError(f"lora: {weights.name} matches {matched} of its {weights.layers} layers in this "
                              f"{self._model_title} model; a LoRA made for another model family or model?")
        return name

    def _layers_holding(self, name: str) -> int:
        """Layers of the pipeline's modules that diffusers gave this adapter (peft LoRA layers)."""
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        return sum(1 for component in self._pipe.components.values() if isinstance(component, torch.nn.Module)
                   for module in component.modules()
                   if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}))

    def _discard(self, name: str) -> None:
        """Remove what a failed load left behind, so the model stays as it was."""
        present = {adapter for adapters in self._pipe.get_list_adapters().values() for adapter in adapters}
        if name in present:
            self._pipe.delete_adapters([name])
