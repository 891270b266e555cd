"""A whole sweep planned before anything loads: each job composed, validated, ordered by cost and batched.

Hydra composes a config per job (about 50 ms each here), which a sweep of hundreds of trials would pay twice
(the sweeper checks, the launcher composes). `JobComposer` composes once per distinct set of config-group
choices and applies each job's plain `key=value` overrides with Hydra's own override code, which is what a
full composition does last. `plan_trials` turns composed jobs into validated trials (or their one-line
errors); `cost_order` and `batches` decide what runs together.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeplab.errors import ConfigError
from sweeplab.runnames import RunName


@dataclass
class ComposedJob:
    """One Hydra job of a sweep, composed: its number, overrides, task config and config-group choices."""

    num: int
    overrides: list[str]
    cfg: DictConfig | None  # the job's config without the `hydra` node; None if it could not be composed
    choices: dict[str, str | None] = field(default_factory=dict)  # hydra.runtime.choices, e.g. experiment
    error: str | None = None  # why it could not be composed, one line
    run_name: RunName | None = None  # planned over the whole sweep (runnames.plan_run_names), before any task runs


class JobComposer:
    """Each job's config from one composition per distinct set of config-group (structural) overrides."""

    def __init__(self, config_loader, master_config: DictConfig):
        self._loader = config_loader
        self._master = master_config
        self._groups = set(OmegaConf.to_container(master_config.hydra.runtime.choices))
        self._parser = OverridesParser.create()
        self._bases: dict[tuple[str, ...], tuple[DictConfig, dict]] = {}

    def compose(self, num: int, overrides: list[str]) -> ComposedJob:
        try:
            parsed = self._parser.parse_overrides(list(overrides))
            structural = [o for o in parsed if not self._is_plain_value(o)]
            values = [o for o in parsed if self._is_plain_value(o)]
            base, choices = self._base([o.input_line for o in structural])
            cfg = copy.deepcopy(base)
            if any(OmegaConf.select(cfg, o.key_or_group, default=_ABSENT) is _ABSENT for o in values):
                base, choices = self._base(list(overrides), cache=False)  # Hydra's own message for a bad key
                return ComposedJob(num, list(overrides), base, choices)
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        except Exception as err:  # noqa: BLE001 - a job that cannot be composed is a failed trial, not a crash
            lines = str(err).strip().splitlines()
            return ComposedJob(num, list(overrides), None, error=lines[0] if lines else type(err).__name__)
        return ComposedJob(num, list(overrides), cfg, choices)

    def check_structure(self, overrides: list[str]) -> None:
        """Raise Hydra's own error if the job's config-group choices cannot be composed (cached per choice set)."""
        parsed = self._parser.parse_overrides(list(overrides))
        self._base([o.input_line for o in parsed if not self._is_plain_value(o)])

    def _is_plain_value(self, override: Override) -> bool:
        """`key=value` on a config value (not a group, not hydra's, no +/~/@package): Hydra applies these last."""
        key = override.key_or_group
        return (
            override.type == OverrideType.CHANGE
            and override.package is None
            and not override.is_sweep_override()
            and key not in self._groups
            and key.split(".")[0] != "hydra"
        )

    def _base(self, structural: list[str], cache: bool = True) -> tuple[DictConfig, dict]:
        key = tuple(structural)
        if key not in self._bases or not cache:
            composed = self._loader.load_sweep_config(self._master, structural)
            choices = OmegaConf.to_container(composed.hydra.runtime.choices)
            with open_dict(composed):
                del composed["hydra"]
            if not cache:
                return composed, choices
            self._bases[key] = (composed, choices)
        return self._bases[key]


_ABSENT = object()


@dataclass
class PlannedTrial:
    """A job of the sweep as it will run: the validated trial, or the one-line reason it cannot."""

    job: ComposedJob
    trial: object | None = None  # a sweeplab.trial.Trial
    error: str | None = None

    @property
    def label(self) -> str:
        return f"#{self.job.num}"


def plan_trials(jobs: list[ComposedJob]) -> list[PlannedTrial]:
    """Validate every job before any model loads; an invalid one keeps its one-line error."""
    from sweeplab.images import InitImages
    from sweeplab.trial import prepare_trial

    images = InitImages()  # the sweep's trials mostly share one init image
    planned = []
    for job in jobs:
        if job.cfg is None:
            planned.append(PlannedTrial(job, error=job.error))
            continue
        try:
            planned.append(PlannedTrial(job, trial=prepare_trial(job.cfg, images)))
        except ConfigError as err:
            planned.append(PlannedTrial(job, error=str(err)))
    return planned


def cost_key(trial) -> tuple:
    """Most expensive change first: the model (a load), then what changes shapes or kernels, then the sampler."""
    spec = trial.spec
    return (spec.model_source.identity, spec.device, spec.dtype, trial.compile,
            tuple(weights.sha256 for weights in spec.lora),  # each LoRA file loads once per run of trials using it
            spec.width, spec.height, spec.inpaint, spec.scheduler, spec.sampler)


def raw_cost_key(job: ComposedJob) -> tuple:
    """`cost_key` from a composed config alone (no validation, no torch), to cut a sweep into cluster tasks."""
    if job.cfg is None:
        return ()
    select = lambda key: str(OmegaConf.select(job.cfg, key, default=None))  # noqa: E731
    return tuple(select(key) for key in ("model.path", "model.hub_id", "model.builtin", "device", "dtype",
                                         "compile", "width", "height", "sampler.scheduler", "sampler.name"))


def cost_order(planned: list[PlannedTrial]) -> list[PlannedTrial]:
    """Runnable trials grouped by model, size and sampler, then batchable ones side by side; a stable sort."""
    return sorted((p for p in planned if p.trial is not None),
                  key=lambda p: (cost_key(p.trial), batch_key(p.trial) or ()))


# What may differ between the trials of one pipeline call: each gets its own generator, prompt and noise.
BATCHABLE_FIELDS = frozenset({"seed", "prompt", "negative_prompt", "variation_amount", "variation_seed",
                              "with_variations"})


def batch_key(trial) -> tuple | None:
    """Trials with equal keys can share one pipeline call; None: the trial runs alone."""
    if trial.iterations > 1 or trial.spec.inpaint:
        return None  # a chain feeds each output back; inpainting runs its own pipeline
    spec = trial.spec
    return tuple((f.name, repr(getattr(spec, f.name))) for f in fields(spec) if f.name not in BATCHABLE_FIELDS) + (
        ("preview", repr(trial.preview)), ("compile", trial.compile),
    )


def batches(ordered: list[PlannedTrial], batch_size: int) -> list[list[PlannedTrial]]:
    """Consecutive trials of equal batch key, at most `batch_size` together."""
    groups: list[list[PlannedTrial]] = []
    for planned in ordered:
        key = batch_key(planned.trial)
        last = groups[-1] if groups else None
        if (last is not None and key is not None and len(last) < batch_size
                and batch_key(last[0].trial) == key):
            last.append(planned)
        else:
            groups.append([planned])
    return groups
