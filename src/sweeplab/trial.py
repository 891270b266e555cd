"""From a composed config to a validated, hashable trial: everything checked before a model loads."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field

from omegaconf import DictConfig
from PIL import Image

from sweeplab.errors import ConfigError
from sweeplab.images import fit_to_size, image_digest, load_init_image
from sweeplab.models import ModelSource, resolve_model_source
from sweeplab.schema import PreviewConfig, SweeplabConfig, validate_config

DTYPES = ("float32", "float16", "bfloat16")
PREVIEW_METHODS = ("linear", "vae")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class TrialSpec:
    """What defines one img2img trial; its hash names the trial across runs and machines."""

    model: str
    model_source: ModelSource
    sampler: str
    scheduler: str
    scheduler_options: dict = field(hash=False)
    prompt: str
    negative_prompt: str
    init_image: str
    init_image_sha256: str
    strength: float
    steps: int
    seed: int
    cfg_scale: float
    width: int
    height: int
    device: str
    dtype: str

    @property
    def config_hash(self) -> str:
        identity = asdict(self)
        identity["model_source"] = self.model_source.identity
        identity["init_image"] = None  # the pixels count, not the path they came from
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def params(self) -> dict[str, str]:
        """The values users compare runs by, as MLflow params."""
        keys = ("model", "sampler", "strength", "steps", "seed", "cfg_scale", "width", "height",
                "prompt", "negative_prompt", "init_image")
        return {key: str(getattr(self, key)) for key in keys}


@dataclass(frozen=True)
class Trial:
    spec: TrialSpec
    init_image: Image.Image  # already at the trial's width x height
    preview: PreviewConfig
    resume: bool  # in a sweep, reuse a FINISHED run of the same config hash instead of running


def prepare_trial(cfg: DictConfig) -> Trial:
    """Validate one trial's config, cheapest checks first, and load its init image."""
    conf = validate_config(cfg)
    _check_ranges(conf)
    scheduler_options = _check_sampler(conf)
    model_source = resolve_model_source(conf.model)
    image = load_init_image(conf.init_image)
    width = _check_size("width", conf.width, image.width)
    height = _check_size("height", conf.height, image.height)
    device = resolve_device(conf.device)
    spec = TrialSpec(
        model=conf.model.name,
        model_source=model_source,
        sampler=conf.sampler.name,
        scheduler=conf.sampler.scheduler,
        scheduler_options=scheduler_options,
        prompt=conf.prompt,
        negative_prompt=conf.negative_prompt,
        init_image=conf.init_image,
        init_image_sha256=image_digest(image),
        strength=conf.strength,
        steps=conf.steps,
        seed=conf.seed,
        cfg_scale=conf.cfg_scale,
        width=width,
        height=height,
        device=device,
        dtype=resolve_dtype(conf.dtype, device),
    )
    return Trial(spec, fit_to_size(image, width, height), conf.preview, conf.resume)


def _check_ranges(conf: SweeplabConfig) -> None:
    if not 0.0 <= conf.strength <= 1.0:
        raise ConfigError(f"strength: {conf.strength} is out of range; allowed 0.0 to 1.0")
    if conf.steps < 1:
        raise ConfigError(f"steps: {conf.steps} is out of range; allowed 1 or more")
    if int(conf.steps * conf.strength) < 1:
        fix = f"use steps >= {_min_steps_for_one(conf.strength)} or " if conf.strength > 0 else ""
        raise ConfigError(
            f"strength x steps: {conf.strength} x {conf.steps} runs no denoising step "
            f"(img2img denoises int(steps * strength) = 0 steps); {fix}strength >= {1 / conf.steps:g}"
        )
    if not 0 <= conf.seed <= MAX_SEED:
        raise ConfigError(f"seed: {conf.seed} is out of range; allowed 0 to {MAX_SEED}")
    if conf.cfg_scale < 0:
        raise ConfigError(f"cfg_scale: {conf.cfg_scale} is out of range; allowed 0 or more")
    if conf.dtype != "auto" and conf.dtype not in DTYPES:
        raise ConfigError(f"dtype: '{conf.dtype}' is unknown; allowed: auto, {', '.join(DTYPES)}")
    if conf.preview.method not in PREVIEW_METHODS:
        raise ConfigError(f"preview.method: '{conf.preview.method}' is unknown; allowed: {', '.join(PREVIEW_METHODS)}")
    if not 8 <= conf.preview.tile_size <= 1024:
        raise ConfigError(f"preview.tile_size: {conf.preview.tile_size} is out of range; allowed 8 to 1024")


def _min_steps_for_one(strength: float) -> int:
    steps = max(1, int(1 / strength))
    while int(steps * strength) < 1:
        steps += 1
    return steps


def _check_sampler(conf: SweeplabConfig) -> dict:
    """The scheduler class must exist in diffusers and accept every option given."""
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, conf.sampler.scheduler, None)
    if not (inspect.isclass(cls) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(f"sampler.scheduler: '{conf.sampler.scheduler}' is not a diffusers scheduler class")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for option in conf.sampler.options:
        if option not in accepted:
            raise ConfigError(
                f"sampler.options.{option}: not an option of {cls.__name__} (sampler {conf.sampler.name}); "
                f"allowed: {', '.join(sorted(accepted))}"
            )
    return dict(conf.sampler.options)


def _check_size(key: str, requested: int | None, image_side: int) -> int:
    if requested is None:
        side = image_side // 8 * 8
        if side < 8:
            raise ConfigError(f"init_image: {image_side} px on a side is too small; allowed 8 px or more")
        return side
    if requested < 8 or requested % 8:
        raise ConfigError(f"{key}: {requested} is not a positive multiple of 8; allowed e.g. {max(8, requested // 8 * 8)}")
    return requested


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if kind not in available:
        raise ConfigError(f"device: '{device}' is unknown; allowed: auto, cpu, cuda, cuda:N, mps")
    if not available[kind]:
        raise ConfigError(f"device: '{device}' is not available on this machine; allowed: auto, cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return dtype
