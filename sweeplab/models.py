"""Where a model comes from and which family it is, checked cheaply up front, and how its pipelines load.

`resolve_model_source` only looks at files (model_index.json, a safetensors header), so a bad
`model.path` or a sampler the family cannot run fails before anything loads. `PipelineCache`
loads each model once per process, as its family's img2img pipeline class.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from sweeplab import console
from sweeplab.errors import ConfigError
from sweeplab.families import FAMILIES, SD, ModelFamily, family_named, family_of_pipeline_class
from sweeplab.lora import LoraAdapters
from sweeplab.render import read_latent_rgb
from sweeplab.schema import ModelConfig
from sweeplab.singlefile import single_file_family

SourceKind = Literal["toy", "folder", "single_file", "hub"]
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
HUB_PROBE_TIMEOUT_S = 5  # a model missing from the cache fails this soon without network, not after retries

log = logging.getLogger("sweeplab")
# Here sweeplab starts to touch diffusers (the toy model, the loader): its pipelines' imports and
# casts print notices nobody can act on, dropped from here on, in every process that runs trials.
console.quiet_library_notices()


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    location: str  # hub id, path, or the toy model's version
    family: str = SD.name  # a key of sweeplab.families.FAMILIES, found from the files or model.family
    config: str | None = None  # diffusers config for a single-file checkpoint
    variant: str | None = None
    revision: str | None = None
    allow_pickle: bool = False  # pickle weights may load (they can run code)
    token: str | None = field(default=None, compare=False, repr=False)  # never part of an identity

    @property
    def identity(self) -> str:
        """What distinguishes this model in a trial's config hash."""
        parts = [self.kind, self.location, self.variant or "", self.revision or ""]
        return ":".join(parts)

    @property
    def name(self) -> str:
        """The checkpoint as people name it (the `model` param): the hub id, the folder or file name, or `toy`."""
        if self.kind == "toy":
            return "toy"
        return self.location if self.kind == "hub" else Path(self.location).name

    @property
    def model_family(self) -> ModelFamily:
        return FAMILIES[self.family]


def resolve_model_source(model: ModelConfig) -> ModelSource:
    """Decide where the weights come from and their family, reading only file headers."""
    source = _weights_source(model)
    found = _found_family(source)
    if model.family is not None:
        declared = family_named(model.family)
        if found is not None and found is not declared:
            raise ConfigError(f"model.family: '{model.family}' but {source.name} is a {found.title} model "
                              f"('{found.name}'); drop model.family or set model.family={found.name}")
        found = declared
    if found is None:
        unread = ("is a pickle checkpoint, read only by loading it" if source.kind == "single_file"
                  else "is not in the Hugging Face cache to read it from")
        raise ConfigError(f"model.family: not set, and {source.name} {unread}; "
                          f"set model.family= one of {', '.join(FAMILIES)}")
    return replace(source, family=found.name)


def _weights_source(model: ModelConfig) -> ModelSource:
    if model.path:
        return _local_source(model)
    if model.builtin == "toy":
        from sweeplab.toy import TOY_VERSION

        return ModelSource("toy", TOY_VERSION)
    if model.builtin:
        raise ConfigError(f"model.builtin: unknown embedded model '{model.builtin}'; allowed: toy")
    if model.hub_id:
        return ModelSource("hub", model.hub_id, variant=model.variant, revision=model.revision,
                           allow_pickle=model.allow_pickle, token=model.token)
    raise ConfigError("model: names no weights; set model.path=..., model.hub_id=... or choose model=toy")


def _found_family(source: ModelSource) -> ModelFamily | None:
    """The family the files say: a folder's model_index.json, a single file's keys; None when nothing tells."""
    if source.kind == "toy":
        return SD
    if source.kind == "single_file":  # a pickle checkpoint cannot be read without loading (running) it
        return None if source.allow_pickle else FAMILIES[single_file_family(source.location)]
    if source.kind == "folder":
        index = Path(source.location) / "model_index.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, "model_index.json", revision=source.revision)
        if not isinstance(cached, str):
            return None
        index = Path(cached)
    class_name = json.loads(index.read_text()).get("_class_name", "")
    family = family_of_pipeline_class(class_name)
    if family is None:
        raise ConfigError(f"model: {source.name} is a {class_name or 'pipeline without _class_name'}; sweeplab runs "
                          f"{', '.join(family.title for family in FAMILIES.values())} img2img pipelines")
    return family


def _local_source(model: ModelConfig) -> ModelSource:
    path = Path(model.path).expanduser().resolve()
    where = f"model.path: '{model.path}'"
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"{where} is a folder without model_index.json; expected a diffusers pipeline folder")
        _check_components(path, where)
        pickles = _pickle_only_weights(path)
        if pickles:
            _check_pickle_allowed(model, f"{where} holds pickle weights ({pickles[0]})")
        if not model.variant:
            _check_plain_weights(path, where)
        return ModelSource("folder", str(path), variant=model.variant, allow_pickle=model.allow_pickle)
    if not path.exists():
        raise ConfigError(f"{where} does not exist; expected a diffusers folder or a .safetensors file")
    if path.suffix in PICKLE_SUFFIXES:
        _check_pickle_allowed(model, f"{where} is a pickle checkpoint")
        return ModelSource("single_file", str(path), config=model.config, allow_pickle=True)
    if path.suffix != ".safetensors":
        raise ConfigError(f"{where} is not a model; expected a diffusers folder or a .safetensors file")
    return ModelSource("single_file", str(path), config=model.config)


def _check_pickle_allowed(model: ModelConfig, what: str) -> None:
    """Pickle files can run arbitrary code when loaded: refused unless the user opts in."""
    if not model.allow_pickle:
        raise ConfigError(f"{what}, which can run code when loaded; use .safetensors, "
                          "or set model.allow_pickle=true if you trust the file")
    log.warning("%s; loading it because model.allow_pickle=true (pickle can run code)", what)


def _pickle_only_weights(folder: Path) -> list[str]:
    """Pickle weight files in a diffusers folder whose component has no .safetensors beside them."""
    found = []
    for weights in sorted(folder.rglob("*")):
        if weights.suffix in PICKLE_SUFFIXES and not any(weights.parent.glob("*.safetensors")):
            found.append(str(weights.relative_to(folder)))
    return found


def _check_plain_weights(folder: Path, where: str) -> None:
    """Without model.variant diffusers wants plain weight files; a component that has only variant files
    (unet/diffusion_pytorch_model.fp16.safetensors) is named with the setting that loads it."""
    components: dict[Path, list[Path]] = {}
    for weights in sorted(folder.rglob("*")):
        if weights.suffix in WEIGHT_SUFFIXES:
            components.setdefault(weights.parent, []).append(weights)
    for files in components.values():
        variants = [_weights_variant(weights) for weights in files]
        if all(variants):
            raise ConfigError(f"{where} has only '{variants[0]}' weights in {files[0].parent.relative_to(folder)}/ "
                              f"({files[0].name}); set model.variant={variants[0]}")


def _weights_variant(weights: Path) -> str | None:
    """'fp16' for diffusion_pytorch_model.fp16.safetensors (or a shard of it), None for plain weights."""
    parts = weights.name.split(".")
    return re.sub(r"-\d+-of-\d+$", "", parts[1]) if len(parts) == 3 else None


def check_hub_reachable(source: ModelSource) -> None:
    """A hub model that is neither in the local cache nor downloadable fails now, in one line, instead of
    after diffusers' retries with an error about model_index.json."""
    if source.kind != "hub":
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source.location, "model_index.json", revision=source.revision), str):
        return
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_unreachable(constants.ENDPOINT)
    if why is None:
        return
    raise ConfigError(f"model: '{source.location}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                      f"there is no network ({why}); download it once online with HF_HUB_OFFLINE unset, "
                      "or point model.path= at a local diffusers folder or .safetensors file")


def _hub_unreachable(endpoint: str) -> str | None:
    """Why the hub cannot be reached, or None when it answers (with any HTTP status)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except OSError as err:  # URLError (no DNS, refused, TLS) and timeouts
        return f"{endpoint} cannot be reached: {getattr(err, 'reason', err)}"
    return None


def _check_components(folder: Path, where: str) -> None:
    """Every component model_index.json names has its folder: diffusers reports a missing one as a config.json."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{where}: model_index.json is not valid JSON") from None
    for name, spec in sorted(index.items()):
        if not name.startswith("_") and isinstance(spec, list) and spec and spec[0] and not (folder / name).is_dir():
            raise ConfigError(f"{where} lacks the {name}/ folder that its model_index.json lists; expected a "
                              "complete diffusers pipeline folder")


SD_VAE_CHANNELS = 128  # the first VAE block of SD 1.x, 2.x and XL, for models whose config is not on disk


def vae_channels(source: ModelSource) -> int:
    """Channels of the VAE's full-resolution block, read from its config without loading weights."""
    if source.kind in ("toy", "folder"):
        from sweeplab.toy import SHIPPED_DIR

        config = (SHIPPED_DIR if source.kind == "toy" else Path(source.location)) / "vae" / "config.json"
        if config.is_file():
            return int(json.loads(config.read_text()).get("block_out_channels", [SD_VAE_CHANNELS])[0])
    return SD_VAE_CHANNELS


@dataclass
class LoadedModel:
    """A model's img2img pipeline plus what trials need beside it, kept for the life of a process.

    Trials never change these objects: each runs on its own pipeline object over the same modules
    (`for_trial`), with its own scheduler. The one exception is LoRA, which lives on the shared modules:
    `lora` sets them to exactly the trial's adapters before each call.
    """

    pipe: object  # the family's img2img pipeline, as loaded
    family: ModelFamily
    scheduler_config: dict  # the model's own scheduler config, the base of every sampler
    latent_rgb: tuple | None  # a fitted latent->RGB map shipped with the model (the toy's); else the family's
    _pipelines: dict = field(default_factory=dict, repr=False)  # pipeline kind -> pipeline over the same modules
    lora: LoraAdapters = field(init=False, repr=False)  # the LoRA adapters loaded into the modules

    def __post_init__(self):
        self.lora = LoraAdapters(self.pipe, self.family.title)

    def pipeline(self, kind: str):
        """The img2img pipeline, or the family's inpainting or text-to-image pipeline over the same modules.

        diffusers' inpaint pipelines blend latents outside the mask for a 4-channel UNet
        and feed mask and masked image to a 9-channel inpainting UNet.
        """
        if kind == "img2img":
            return self.pipe
        if kind not in self._pipelines:
            import diffusers

            class_name = getattr(self.family, kind)
            if class_name is None:
                raise ConfigError(f"init_image: {self.family.title} models have no {kind} pipeline in sweeplab")
            self._pipelines[kind] = pipeline_over(getattr(diffusers, class_name), self.pipe)
        return self._pipelines[kind]

    def for_trial(self, kind: str, scheduler):
        """A pipeline object of its own for one call, sharing every module, with the trial's scheduler."""
        base = self.pipeline(kind)
        return pipeline_over(type(base), base, scheduler=scheduler)

    @property
    def denoiser(self):
        return getattr(self.pipe, self.family.denoiser)


def pipeline_over(cls, base, **replaced):
    """A `cls` pipeline over `base`'s modules and config options, with `replaced` components swapped in.

    What `from_pipe` builds, without its last step: `from_pipe` casts every shared module to the dtype
    it is given, float32 when none is, so an fp16 pipeline turned fp32 at its first trial, and one
    dtype for all would undo the float32 layers a text encoder keeps (`_keep_in_fp32_modules`).
    """
    modules, options = cls._get_signature_keys(cls)
    kwargs = {name: component for name, component in base.components.items() if name in modules}
    kwargs.update({name: base.config[name] for name in options if name in base.config})
    return cls(**{**kwargs, **replaced})


def load_img2img_pipeline(source: ModelSource, device: str, dtype, compile: bool = False) -> LoadedModel:
    """Load the family's img2img pipeline class through diffusers (a folder, a hub id or a single file)."""
    import diffusers

    family = source.model_family
    cls = getattr(diffusers, family.img2img)  # diffusers imports only this pipeline's module
    location = source.location
    if source.kind == "toy":
        from sweeplab.toy import toy_model_dir

        location = str(toy_model_dir())
    if source.kind == "single_file":
        pipe = cls.from_single_file(source.location, config=source.config, dtype=dtype)
    else:
        pipe = cls.from_pretrained(
            location, dtype=dtype, variant=source.variant, revision=source.revision, token=source.token,
            use_safetensors=None if source.allow_pickle else True,  # None: safetensors first, then pickle
        )
    latent_rgb = read_latent_rgb(location) if source.kind in ("toy", "folder") else None
    if device != "cpu":
        pipe = pipe.to(device)
    if compile:
        # diffusers' recipe (optimization/torch2.0): channels-last weights, the denoiser through torch.compile.
        # A new input shape recompiles, so the engine runs the trials of one size together.
        denoiser = getattr(pipe, family.denoiser)
        denoiser.to(memory_format=torch.channels_last)
        setattr(pipe, family.denoiser, torch.compile(denoiser))
    return LoadedModel(pipe, family, dict(pipe.scheduler.config), latent_rgb)


class PipelineCache:
    """Loaded pipelines by (model, device, dtype), at most `max_loaded` at once.

    A sweep runs its trials ordered by model, so each model loads once; the oldest is released
    before the next one loads, so two large models never share the device's memory.
    """

    def __init__(self, max_loaded: int | None = None):
        self.max_loaded = max_loaded  # None: keep every model loaded
        self._pipelines: dict[tuple, LoadedModel] = {}

    def get(self, source: ModelSource, device: str, dtype, compile: bool = False) -> LoadedModel:
        key = (source, device, str(dtype), compile)
        if key not in self._pipelines:
            check_hub_reachable(source)  # before diffusers' retries, whose error would name the wrong cause
            while self.max_loaded is not None and len(self._pipelines) >= self.max_loaded:
                self._release(next(iter(self._pipelines)))
            started = time.perf_counter()
            try:
                self._pipelines[key] = load_img2img_pipeline(source, device, dtype, compile)
            except (OSError, ValueError) as err:
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                hint = "; without network, point model.path=... at a local copy" if source.kind == "hub" else ""
                raise ConfigError(f"model: could not load '{source.location}': {first_line}{hint}") from err
            log.info("model %s loaded on %s (%s) in %.1f s", source.location, device, dtype,
                     time.perf_counter() - started)
        return self._pipelines[key]

    def _release(self, key: tuple) -> None:
        import gc

        del self._pipelines[key]
        gc.collect()
        if key[1].startswith("cuda"):
            torch.cuda.empty_cache()
