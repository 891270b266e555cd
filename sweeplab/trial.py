"""From a composed config to a validated, hashable trial: everything checked before a model loads."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image

from sweeplab.errors import ConfigError
from sweeplab.images import (
    SMALL_IMAGE_WARNING,
    SMALL_SIDE,
    InitImage,
    InitImages,
    fit_within,
    image_digest,
)
from sweeplab.families import ModelFamily
from sweeplab.lora import LoraWeights, parse_loras
from sweeplab.models import ModelSource, resolve_model_source, vae_channels
from sweeplab.schema import PreviewConfig, SweeplabConfig, validate_config

log = logging.getLogger("sweeplab")

DTYPES = ("float32", "float16", "bfloat16")
PREVIEW_METHODS = ("linear", "vae")
MAX_SEED = 2**63 - 1
MANY_STEPS = 500  # more nominal steps than this get a warning (UIs stop at 150; schedules have 1000 timesteps)
# A trial's peak memory above its loaded model, in float activations of the VAE's first block at full resolution:
# the peak RSS of a toy trial measured 6.2 of them at 512x2048 and 5.8 at 512x4096 (3, the block's input, output
# and residual alone, let height=100000 through to the OOM killer); 5 stays below what a run needs, so no trial
# that fits is refused.
PEAK_ACTIVATIONS = 5
PARAM_KEYS = ("model", "model_family", "sampler", "strength", "steps", "seed", "cfg_scale", "width", "height", "prompt",
              "negative_prompt", "init_image", "fit", "iteration", "variation_amount", "variation_seed",
              "steps_taken_target")
RUN_ONLY = {"run_only": True}  # a TrialSpec field that says how this run executes, not which trial it is
DERIVED = {"derived": True}  # a TrialSpec field that follows from others in the identity (not hashed twice)


@dataclass(frozen=True)
class TrialSpec:
    """What defines one img2img trial; its hash names the trial across runs and machines.

    The hash holds what the user asked for (`device: auto` hashes as auto), never what this
    machine resolved it to, so a login node and a GPU node agree on a trial's name. Fields
    with defaults are options: at their default they stay out of the hash, so adding an
    option never renames the trials that do not use it.
    """

    model: str  # the checkpoint as people name it: hub id, folder or file name, or toy
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
    requested_device: str  # as configured: auto, cpu, cuda, cuda:N, mps; part of the identity
    requested_dtype: str  # as configured: auto, float32, float16, bfloat16; part of the identity
    device: str = field(metadata=RUN_ONLY)  # requested_device resolved on this machine: what the run uses
    dtype: str = field(metadata=RUN_ONLY)  # requested_dtype resolved for `device`: what the run uses
    inpaint: bool = False
    fit: bool = False
    variation_amount: float = 0.0
    variation_seed: int | None = None
    with_variations: tuple[tuple[int, float], ...] = ()
    steps_taken_target: int | None = None
    iteration: int = 0
    text2img: bool = False  # no init image: the family's text-to-image pipeline from pure noise (strength 1.0)
    lora: tuple[LoraWeights, ...] = ()  # LoRA files and scales, in the order they were listed
    model_family: str = field(default="sd", metadata=DERIVED)  # sweeplab.families key, read from the model's files

    @property
    def config_hash(self) -> str:
        identity = {
            spec.name: getattr(self, spec.name)
            for spec in fields(self)
            if not spec.metadata.get("run_only") and not spec.metadata.get("derived")
            and (spec.default is MISSING or getattr(self, spec.name) != spec.default)
        }
        identity["model_source"] = self.model_source.identity
        identity["init_image"] = None  # the pixels count, not the path they came from
        if self.lora:  # the file's bytes count, not its path
            identity["lora"] = [[weights.sha256, weights.scale] for weights in self.lora]
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def varies_noise(self) -> bool:
        return self.variation_amount > 0 or bool(self.with_variations)

    def params(self) -> dict[str, str]:
        """The values users compare runs by, as MLflow params."""
        params = {key: str(getattr(self, key)) for key in PARAM_KEYS}
        params["with_variations"] = ",".join(f"{seed}:{weight:g}" for seed, weight in self.with_variations)
        params["lora"] = ",".join(weights.label for weights in self.lora)
        return params


@dataclass(frozen=True)
class Trial:
    spec: TrialSpec
    init: InitImage | None  # already at the trial's width x height; a mask means inpainting; None: text-to-image
    preview: PreviewConfig
    warnings: tuple[str, ...] = ()
    iterations: int = 1  # the length of the chain this trial starts
    prompt_template: tuple[str, str] | None = None  # Prompt S/R: (search, replace)
    resume: bool = True  # in a sweep, reuse a FINISHED run of the same config hash instead of running
    compile: bool = False  # run the denoiser through torch.compile; same trial, same hash
    step_images: bool = True  # render every step's latent as a preview: tracking.log_step_images logs them

    def next_iteration(self, output: Image.Image) -> "Trial":
        """The next link of an iterations chain: this trial's output becomes the init image."""
        init = InitImage(output.convert("RGB"), self.init.mask)
        spec = replace(self.spec, init_image_sha256=image_digest(init), iteration=self.spec.iteration + 1)
        return replace(self, spec=spec, init=init, warnings=())


def prepare_trial(cfg: DictConfig, images: InitImages | None = None) -> Trial:
    """Validate one trial's config, cheapest checks first, and load its init image (through `images`, a sweep's
    shared ones, when given)."""
    images = images or InitImages()
    conf = validate_config(cfg)
    text2img = conf.init_image is None
    if text2img:
        _check_text2img(conf)
        conf = replace(conf, strength=1.0)  # text-to-image starts from pure noise: all of the schedule
    _check_ranges(conf)
    prompt, template = _resolve_prompt(conf)
    variations = _parse_variations(conf.with_variations)
    loras = parse_loras(conf.lora, conf.lora_scale)
    scheduler_options = _check_sampler(conf)
    model_source = resolve_model_source(conf.model)
    family = model_source.model_family
    _check_family(conf, family)
    steps = _resolve_steps(conf, family)
    _check_denoises(conf, steps, family)
    image, digest = (None, "") if text2img else images.load(conf.init_image)
    width, height = _trial_size(conf, *(image.rgb.size if image else (0, 0)), family.size_multiple)
    device = resolve_device(conf.device)
    dtype = resolve_dtype(conf.dtype, device)
    _check_memory(model_source, width, height, device, dtype)
    warnings = []
    if image is not None and min(image.rgb.size) < SMALL_SIDE:
        warnings.append(SMALL_IMAGE_WARNING.format(w=image.rgb.width, h=image.rgb.height))
    if steps > MANY_STEPS:
        warnings.append(f"steps: {steps} is unusually many (more than {MANY_STEPS}); this trial will take "
                        f"{family.steps_taken(steps, conf.strength)} denoising steps")
        log.warning("%s", warnings[-1])  # now, not after the long run
    if image is not None and image.mask is not None and (variations or conf.variation_amount > 0):
        raise ConfigError("variation_amount/with_variations: not supported with a transparent (inpainting) init image")
    spec = TrialSpec(
        model=model_source.name,
        model_source=model_source,
        model_family=family.name,
        sampler=conf.sampler.name,
        scheduler=conf.sampler.scheduler,
        scheduler_options=scheduler_options,
        prompt=prompt,
        negative_prompt=conf.negative_prompt,
        init_image=conf.init_image or "null",  # as the user wrote it
        init_image_sha256=digest,
        strength=conf.strength,
        steps=steps,
        seed=conf.seed,
        cfg_scale=conf.cfg_scale,
        width=width,
        height=height,
        requested_device=conf.device,
        requested_dtype=conf.dtype,
        device=device,
        dtype=dtype,
        inpaint=image is not None and image.mask is not None,
        text2img=text2img,
        fit=conf.fit,
        variation_amount=conf.variation_amount,
        variation_seed=_variation_seed(conf),
        with_variations=variations,
        steps_taken_target=conf.steps_taken_target,
        lora=loras,
    )
    init = images.resized(conf.init_image, width, height) if image else None
    return Trial(spec, init, conf.preview, tuple(warnings), conf.iterations, template, conf.resume, conf.compile,
                 conf.tracking.log_step_images)


def _check_text2img(conf: SweeplabConfig) -> None:
    """What needs an init image fails in one line when there is none."""
    if conf.width is None or conf.height is None:
        raise ConfigError("width/height: text-to-image (init_image=null) has no image to take its size from; "
                          "set width= and height=")
    needs_image = {"fit": conf.fit, "iterations": conf.iterations > 1, "variation_amount": conf.variation_amount > 0, "with_variations": conf.with_variations}
    for key, used in needs_image.items():
        if used:
            raise ConfigError(f"{key}: needs an init image (img2img); text-to-image (init_image=null) cannot use it")


def _resolve_steps(conf: SweeplabConfig, family: ModelFamily) -> int:
    """`steps`, or the smallest nominal step count that really denoises `steps_taken_target` times.

    diffusers' img2img pipelines denoise int(steps * strength) steps on SD 1.x/2.x and SDXL, and
    steps - int(steps - steps * strength) on SD 3.x and FLUX (each pipeline's get_timesteps).
    """
    target = conf.steps_taken_target
    if target is None:
        return conf.steps
    if target < 1:
        raise ConfigError(f"steps_taken_target: {target} is out of range; allowed 1 or more")
    if not 0 < conf.strength <= 1:
        raise ConfigError(f"steps_taken_target: needs a strength in (0, 1], got {conf.strength}")
    steps = max(1, int(target / conf.strength) - 2)
    while family.steps_taken(steps, conf.strength) < target:
        steps += 1
    if family.steps_taken(steps, conf.strength) != target:
        raise ConfigError(
            f"steps_taken_target: no step count denoises exactly {target} steps at strength {conf.strength}; "
            f"{steps} steps denoise {family.steps_taken(steps, conf.strength)}"
        )
    return steps


def _resolve_prompt(conf: SweeplabConfig) -> tuple[str, tuple[str, str] | None]:
    """A1111's Prompt S/R: the prompt with prompt_search replaced by prompt_replace."""
    if conf.prompt_search is None and conf.prompt_replace is None:
        return conf.prompt, None
    if not conf.prompt_search:
        raise ConfigError("prompt_search: must be set (non-empty) when prompt_replace is used")
    if conf.prompt_search not in conf.prompt:
        raise ConfigError(f"prompt_search: '{conf.prompt_search}' does not occur in prompt '{conf.prompt}'")
    replacement = conf.prompt_search if conf.prompt_replace is None else conf.prompt_replace
    return conf.prompt.replace(conf.prompt_search, replacement), (conf.prompt_search, replacement)


def _parse_variations(pairs: list[str]) -> tuple[tuple[int, float], ...]:
    parsed = []
    for pair in pairs:
        error = ConfigError(f"with_variations: '{pair}' is not seed:weight with a weight in 0..1, e.g. 1234:0.1")
        seed, sep, weight = str(pair).partition(":")
        try:
            seed_value, weight_value = int(seed), float(weight)
        except ValueError:
            raise error from None
        if not sep or not 0 <= weight_value <= 1 or not 0 <= seed_value <= MAX_SEED:
            raise error
        parsed.append((seed_value, weight_value))
    return tuple(parsed)


def _variation_seed(conf: SweeplabConfig) -> int | None:
    if conf.variation_amount == 0:
        return None
    return conf.seed + 1 if conf.variation_seed is None else conf.variation_seed


def _trial_size(conf: SweeplabConfig, image_width: int, image_height: int, multiple: int) -> tuple[int, int]:
    """width x height in multiples of the family's; with fit=true the image's aspect ratio inside that box
    (InvokeAI --fit)."""
    width = _check_size("width", conf.width, image_width, multiple)
    height = _check_size("height", conf.height, image_height, multiple)
    if conf.fit:
        return fit_within(image_width, image_height, width, height, multiple)
    return width, height


def _check_ranges(conf: SweeplabConfig) -> None:
    if not 0.0 <= conf.strength <= 1.0:
        raise ConfigError(f"strength: {conf.strength} is out of range; allowed 0.0 to 1.0")
    if conf.steps_taken_target is None and conf.steps < 1:
        raise ConfigError(f"steps: {conf.steps} is out of range; allowed 1 or more")
    if not 1 <= conf.iterations <= 100:
        raise ConfigError(f"iterations: {conf.iterations} is out of range; allowed 1 to 100")
    if not 0.0 <= conf.variation_amount <= 1.0:
        raise ConfigError(f"variation_amount: {conf.variation_amount} is out of range; allowed 0.0 to 1.0")
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


def _check_memory(model_source: ModelSource, width: int, height: int, device: str, dtype: str) -> None:
    """Refuse, before loading, a size whose full-resolution activations exceed the memory free on the device."""
    needed = vae_channels(model_source) * width * height * (2 if "16" in dtype else 4) * PEAK_ACTIVATIONS
    free = free_memory(device)
    if free is not None and needed > free:
        raise ConfigError(
            f"width x height: {width}x{height} needs at least {needed / 2**30:.1f} GiB on {device} (the VAE at full "
            f"resolution), more than the {free / 2**30:.1f} GiB free; use a smaller width/height, "
            "e.g. fit=true width=512 height=512")


def free_memory(device: str) -> int | None:
    """Bytes free on the device: MemAvailable for the CPU, the CUDA driver's count for a GPU; None if unknown."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device == "cpu":
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
        found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else None
    return None


def _check_denoises(conf: SweeplabConfig, steps: int, family: ModelFamily) -> None:
    """A trial that would take no denoising step fails here, with the family's own rule."""
    if family.steps_taken(steps, conf.strength) < 1:
        fix = f"use steps >= {_min_steps_for_one(conf.strength, family)} or " if conf.strength > 0 else ""
        raise ConfigError(
            f"strength x steps: {conf.strength} x {steps} runs no denoising step "
            f"(img2img denoises {family.steps_rule} = 0 steps); {fix}strength >= {1 / steps:g}"
        )


def _min_steps_for_one(strength: float, family: ModelFamily) -> int:
    steps = max(1, int(1 / strength))
    while family.steps_taken(steps, strength) < 1:
        steps += 1
    return steps


def _check_family(conf: SweeplabConfig, family: ModelFamily) -> None:
    """What the model's family cannot do fails here, naming the family and what it allows."""
    from sweeplab.samplers import sampler_names, scheduler_class

    if not family.accepts(scheduler_class(conf.sampler.scheduler)):
        raise ConfigError(
            f"sampler: {conf.sampler.name} ({conf.sampler.scheduler}) cannot run {family.title} models "
            f"(model family {family.name}); samplers for {family.name}: {', '.join(sampler_names(family)) or 'none'}")
    if conf.negative_prompt and not family.negative_prompt:
        raise ConfigError(f"negative_prompt: {family.title} models take no negative prompt (their guidance is "
                          "distilled into the model); leave negative_prompt empty")


def _check_sampler(conf: SweeplabConfig) -> dict:
    """The scheduler class must exist (sweeplab's or diffusers') and accept every option given."""
    from sweeplab.samplers import scheduler_class

    cls = scheduler_class(conf.sampler.scheduler)
    if cls is None:
        raise ConfigError(
            f"sampler.scheduler: '{conf.sampler.scheduler}' is not a diffusers or sweeplab scheduler class")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for option in conf.sampler.options:
        if option not in accepted:
            raise ConfigError(
                f"sampler.options.{option}: not an option of {cls.__name__} (sampler {conf.sampler.name}); "
                f"allowed: {', '.join(sorted(accepted))}"
            )
    return dict(conf.sampler.options)


def _check_size(key: str, requested: int | None, image_side: int, multiple: int) -> int:
    if requested is None:
        side = image_side // multiple * multiple
        if side < multiple:
            raise ConfigError(f"init_image: {image_side} px on a side is too small; allowed {multiple} px or more")
        return side
    if requested < multiple or requested % multiple:
        raise ConfigError(f"{key}: {requested} is not a positive multiple of {multiple} (the model's latent grid); "
                          f"allowed e.g. {max(multiple, requested // multiple * multiple)}")
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
