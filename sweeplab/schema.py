"""Typed schema of a sweeplab config, registered in Hydra's ConfigStore.

Hydra composes the YAML in conf/ untyped, so that a bad value in one trial of a
sweep fails that trial alone. `validate_config` merges each trial's config into
these dataclasses and turns OmegaConf's errors into one line naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

from sweeplab.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "toy"
    builtin: Optional[str] = None  # "toy": the embedded model
    hub_id: Optional[str] = None  # a Hugging Face hub repository id
    path: Optional[str] = None  # a local diffusers folder or single .safetensors file; wins over hub_id
    config: Optional[str] = None  # diffusers config folder or hub id for a single-file checkpoint
    variant: Optional[str] = None  # e.g. "fp16" weight files on the hub
    revision: Optional[str] = None
    token: Optional[str] = None  # Hugging Face token for gated hub models; redacted before logging
    allow_pickle: bool = False  # load pickle weights (.ckpt .bin .pt .pth), which can run code
    family: Optional[str] = None  # sd, sdxl, sd3, flux: checked against the files; needed for an uncached hub id


@dataclass
class SamplerConfig:
    name: str = "k_lms"
    scheduler: str = "KDiffusionLMSScheduler"  # a scheduler class: sweeplab.samplers' or diffusers'
    options: dict[str, Any] = field(default_factory=dict)  # passed to Scheduler.from_config


@dataclass
class TrackingConfig:
    uri: Optional[str] = None
    experiment: Optional[str] = None
    log_step_images: bool = True


@dataclass
class PreviewConfig:
    method: str = "linear"
    tile_size: int = 96


@dataclass
class SweeplabConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    prompt: str = "fire"
    negative_prompt: str = ""
    init_image: Optional[str] = "fireplace"  # a path or a sketch name; null: text-to-image
    strength: float = 0.75
    steps: int = 50
    seed: int = 1592514025
    cfg_scale: float = 7.5
    width: Optional[int] = None
    height: Optional[int] = None
    device: str = "auto"
    dtype: str = "auto"
    # The InvokeAI img2img options, each sweepable.
    fit: bool = False  # downscale the init image into the width x height box, keeping its aspect ratio
    iterations: int = 1  # feed each output back as the next init image (InvokeAI -n)
    variation_amount: float = 0.0  # slerp towards the noise of variation_seed (InvokeAI -v)
    variation_seed: Optional[int] = None  # null: seed + 1
    with_variations: list[str] = field(default_factory=list)  # "seed:weight" pairs (InvokeAI -V)
    steps_taken_target: Optional[int] = None  # pick the nominal steps that really denoise this many
    prompt_search: Optional[str] = None  # A1111 Prompt S/R: this text in prompt ...
    prompt_replace: Optional[str] = None  # ... is replaced by this one
    resume: bool = True  # in a sweep, skip trials that already have a FINISHED run
    compile: bool = False  # torch.compile the denoiser (an execution setting: not part of the config hash)
    lora: list[str] = field(default_factory=list)  # "path.safetensors:scale" LoRA files applied in the trial
    lora_scale: float = 1.0  # the scale of a `lora` entry written without one


# At the top level, outside the groups, so that they are never listed as options of `model` etc.
# (--help, the pre-check, shell completion); a group config inherits one with `- /sweeplab_model_schema`.
ConfigStore.instance().store(name="sweeplab_schema", node=SweeplabConfig)
ConfigStore.instance().store(name="sweeplab_model_schema", node=ModelConfig)
ConfigStore.instance().store(name="sweeplab_sampler_schema", node=SamplerConfig)
ConfigStore.instance().store(name="sweeplab_tracking_schema", node=TrackingConfig)


@dataclass
class SweeplabSlurmConf(SlurmQueueConf):
    """sweeplab's defaults for `hydra/launcher=submitit_slurm`: the sweep cut into SLURM array tasks.

    Override any key of hydra-submitit-launcher's SlurmQueueConf on the command line,
    e.g. `hydra.launcher.partition=gpu hydra.launcher.gpus_per_task=null` (CPU cluster).
    """

    _target_: str = "hydra_plugins.sweeplab_launcher.sweeplab_launcher.SweeplabSlurmLauncher"
    name: str = "sweeplab"
    trials_per_task: Optional[int] = None  # trials per SLURM task, one model load each; null: spread over array_parallelism
    batch_size: int = 1  # as hydra.launcher.batch_size of hydra/launcher=sweeplab
    partition: Optional[str] = None  # null: the cluster's default partition
    gpus_per_task: Optional[int] = 1  # one GPU per trial
    cpus_per_task: Optional[int] = 4
    mem_gb: Optional[int] = 32  # per task
    timeout_min: int = 60  # the SLURM time limit of each task
    array_parallelism: int = 8  # at most this many tasks at once
    signal_delay_s: int = 120  # SIGUSR2 this long before the limit: the run ends KILLED, the task requeues


# Replaces the plugin's own entry of the same name, so `hydra/launcher=submitit_slurm` gets these
# defaults. Hydra registers plugin configs when it first scans its plugins: scan now, replace after.
Plugins.instance()
ConfigStore.instance().store(group="hydra/launcher", name="submitit_slurm", node=SweeplabSlurmConf, provider="sweeplab")

SCHEMA_KEYS = frozenset(f for f in SweeplabConfig.__dataclass_fields__)


def validate_config(cfg: DictConfig) -> SweeplabConfig:
    """Type-check one trial's config against the schema; one-line ConfigError on failure.

    A structured merge costs tens of milliseconds, as much as a denoising step of a small model, and a
    sweep validates every trial; `_build` converts each value with OmegaConf's own typed nodes instead,
    and anything it does not take as it is goes through the merge, which says exactly what is wrong.
    """
    user_cfg = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    try:
        conf = _build(SweeplabConfig, user_cfg)
    except _NotPlain:
        conf = _merge(user_cfg)
    _refuse_non_finite(conf)
    return conf


def _merge(user_cfg: dict) -> SweeplabConfig:
    """OmegaConf's structured merge, its errors as one line naming the key and the type expected."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweeplabConfig), user_cfg)
    except ConfigKeyError as err:
        raise ConfigError(f"{err.full_key or err.key}: unknown key; allowed: {_allowed_keys(err.full_key)}") from None
    except ValidationError as err:
        expected = _expected_type(err.full_key)
        raise ConfigError(f"{err.full_key}: {err.msg.splitlines()[0]}; expected {expected}") from None
    return OmegaConf.to_object(merged)


def _refuse_non_finite(conf, prefix: str = "") -> None:
    """nan and inf pass OmegaConf's float check (`cfg_scale=inf` drew an all-black output); no float key takes them."""
    for spec in fields(conf):
        value = getattr(conf, spec.name)
        if is_dataclass(value):
            _refuse_non_finite(value, f"{prefix}{spec.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{spec.name}: {value} is not a finite number; allowed a finite number, "
                              f"e.g. the default {spec.default}")


class _NotPlain(Exception):
    """A value `_build` leaves to OmegaConf's structured merge (and its exact error message)."""


_NODES = {str: StringNode, int: IntegerNode, float: FloatNode, bool: BooleanNode}


def _build(cls: type, values: dict) -> Any:
    """The dataclass from a plain mapping, each value converted as the structured merge converts it."""
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _NotPlain(key)
        kwargs[key] = _convert(hints[key], value)
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _convert(hint: Any, value: Any) -> Any:
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise _NotPlain(value)
    if dataclasses.is_dataclass(base) and isinstance(value, dict):
        return _build(base, value)
    if type(value) is base:  # noqa: E721 - exactly the field's type (a bool is no int here): nothing to convert
        return value
    if base in _NODES:
        try:
            return _NODES[base](value=value)._value()
        except ValidationError:
            raise _NotPlain(value) from None
    origin = typing.get_origin(base)
    if origin is list and isinstance(value, list):
        return [_convert(typing.get_args(base)[0], item) for item in value]
    if origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise _NotPlain(value)


_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "dict[str, Any]": "a mapping",
    "list[str]": "a list of strings",
}


def _field(full_key: str | None):
    """The dataclass field behind a dotted key, and the dataclass holding it."""
    node: Any = SweeplabConfig
    parts = (full_key or "").split(".")
    for part in parts[:-1]:
        node = node.__dataclass_fields__[part].default_factory
    return node, node.__dataclass_fields__.get(parts[-1])


def _allowed_keys(full_key: str | None) -> str:
    holder, _ = _field(full_key)
    return ", ".join(holder.__dataclass_fields__)


def _expected_type(full_key: str) -> str:
    _, spec = _field(full_key)
    annotation = str(spec.type)
    optional = annotation.startswith("Optional[")
    base = annotation.removeprefix("Optional[").removesuffix("]") if optional else annotation
    return _TYPE_WORDS.get(base, base) + (" or null" if optional else "")
