"""Run names that tell a sweep's trials apart in MLflow's runs table: only what differs, short, never two alike.

The runs table cuts names at about 20 characters, so `strength=0.5 seed=3` beats a fixed format that repeats
what every trial shares. Names are planned over the whole sweep from the composed configs (what the user asked
for, no torch), so the cluster launcher names every trial before it cuts the sweep into tasks and a task's
trials are named as in the sweep, not as in the task. Names are a reading aid; a trial's identity stays its
config hash (a tag), which also breaks a tie between two names.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePath

from omegaconf import OmegaConf

# What a name may show, in the order shown, as a user types it: `key=value`.
NAMED_KEYS = ("model", "model.path", "model.hub_id", "model.variant", "lora", "lora_scale", "sampler", "prompt",
              "prompt_search", "prompt_replace", "negative_prompt", "init_image", "strength", "steps",
              "steps_taken_target", "seed", "cfg_scale", "width", "height", "fit", "variation_amount", "variation_seed",
              "with_variations", "iterations", "device", "dtype")
CONFIG_PATHS = {"model": "model.name", "sampler": "sampler.name"}  # a config group's key -> its option's name
MAX_TEXT_CHARS = 20  # a prompt or a path is cut to this many characters (the config hash still tells them apart)
HASH_CHARS = 6  # of the config hash, appended where two names would otherwise be the same


@dataclass(frozen=True)
class RunName:
    """A trial's planned run name; the config hash, known once the trial validates, is added where it ties."""

    text: str
    tied: bool = False  # another trial of the sweep shows the same values: add the config hash
    label: str = ""  # the trial's number (`#3`) where the same values are asked twice (and so hash alike)

    def for_trial(self, config_hash: str) -> str:
        return " ".join(part for part in (self.text, config_hash[:HASH_CHARS] if self.tied else "", self.label) if part)


def plan_run_names(jobs: list) -> None:
    """Set `run_name` on every composed job of a sweep (sweep.ComposedJob): `key=value` for each key whose value
    differs within the sweep; where none differs (a sweep of one trial) the full name. Jobs that could not be
    composed keep None."""
    composed = [job for job in jobs if job.cfg is not None]
    values = [{key: _asked(job.cfg, CONFIG_PATHS.get(key, key)) for key in NAMED_KEYS} for job in composed]
    differing = [key for key in NAMED_KEYS if len({_canonical(asked[key]) for asked in values}) > 1]
    columns = [[f"{key}={text}" for text in _shown([asked[key] for asked in values])] for key in differing]
    texts = [" ".join(parts) for parts in zip(*columns)] if differing else [full_name(asked) for asked in values]
    repeats = Counter(texts)
    identities = [tuple(map(_canonical, asked.values())) for asked in values]
    asked_twice = Counter(identities)
    for job, text, identity in zip(composed, texts, identities):
        job.run_name = RunName(text, tied=repeats[text] > 1, label=f"#{job.num}" if asked_twice[identity] > 1 else "")


def full_name(asked: dict) -> str:
    """A lone trial's name: the values people look for first; a model.path by its folder or file name."""
    model = _shown([asked["model.path"]])[0] if asked["model.path"] else asked["model"]
    return (f"{model} {asked['sampler']} strength={_shown([asked['strength']])[0]} steps={asked['steps']} "
            f"seed={asked['seed']}")


def _asked(cfg, path: str):
    """A key's value; None where it cannot resolve (the trial then fails validation with the reason, not here)."""
    return OmegaConf.select(cfg, path, default=None, throw_on_resolution_failure=False)


def _canonical(value) -> str:
    """Values compared as what they hold (lists and dicts of a config included)."""
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def _file_name(value) -> str:
    """A path as its file name, also inside a list (`lora=[loras/style.safetensors:0.8]`); other values as they are."""
    text = str(value)
    return PurePath(text).name if "/" in text or "\\" in text else text


def _shown(values: list) -> list[str]:
    """One key's values as short as they can be read: 0.5, k_heun, fireplace.png, 1:0.1,2:0.2; texts longer than
    MAX_TEXT_CHARS lose the words they all start with ("…backdrop", "…background"), then their end."""
    values = [OmegaConf.to_container(value) if OmegaConf.is_config(value) else value for value in values]
    if all(isinstance(value, float) for value in values):
        return [f"{value:g}" for value in values]
    texts = [",".join(map(_file_name, value)) if isinstance(value, list) else _file_name(value) for value in values]
    if any(len(text) > MAX_TEXT_CHARS for text in texts):
        shared = os.path.commonprefix(texts)
        start = shared.rfind(" ") + 1 if len(set(texts)) > 1 else 0  # back to the start of the word they differ in
        texts = [("…" if start else "") + text[start:] for text in texts]
        texts = [text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…" for text in texts]
    return [f'"{text}"' if " " in text or not text else text for text in texts]
