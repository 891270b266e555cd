"""Run names that tell a sweep's trials apart in MLflow's runs table: only what differs, short, never two alike.

The runs table cuts names at about 20 characters, so `strength=0.5 seed=3` beats a fixed format that repeats
what every trial shares. Names are a reading aid; a trial's identity stays its config hash (a tag).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import PurePath

# TrialSpec fields a name may show, in the order shown; a name says `key=value` with the key a user types.
NAMED_FIELDS = ("model", "sampler", "prompt", "negative_prompt", "init_image", "strength", "steps", "seed", "cfg_scale",
                "width", "height", "fit", "variation_amount", "variation_seed", "with_variations", "steps_taken_target",
                "requested_device", "requested_dtype")
CONFIG_KEYS = {"requested_device": "device", "requested_dtype": "dtype"}  # spec field -> config key, where they differ
MAX_TEXT_CHARS = 20  # a prompt or a path is cut to this many characters (the config hash still tells them apart)
HASH_CHARS = 6  # of the config hash, appended where two names would otherwise be the same


def full_name(spec) -> str:
    """A lone trial's name: the values people look for first."""
    return f"{spec.model} {spec.sampler} strength={spec.strength:g} steps={spec.steps} seed={spec.seed}"


def name_runs(planned: list) -> None:
    """Set `run_name` on each valid trial of a sweep (sweep.PlannedTrial): `key=value` for each field that differs
    within it, ties broken by the config hash's first characters, then by the trial's label (`#3`) where the same
    trial is asked twice. A sweep of one trial gets the full name."""
    specs = [item.trial.spec for item in planned]
    if len(specs) < 2:
        names = [full_name(spec) for spec in specs]
    else:
        columns = [[f"{CONFIG_KEYS.get(name, name)}={text}" for text in _shown([getattr(spec, name) for spec in specs])]
                   for name in NAMED_FIELDS if len({repr(getattr(spec, name)) for spec in specs}) > 1]
        names = [" ".join(parts) for parts in zip(*columns)] if columns else [full_name(spec) for spec in specs]
        names = _unique(_unique(names, [spec.config_hash[:HASH_CHARS] for spec in specs]),
                        [item.label for item in planned])
    for item, name in zip(planned, names):
        item.run_name = name


def _unique(names: list[str], suffixes: list[str]) -> list[str]:
    counts = Counter(names)
    return [f"{name} {suffix}" if counts[name] > 1 else name for name, suffix in zip(names, suffixes)]


def _shown(values: list) -> list[str]:
    """One field's values as short as they can be read: 0.5, k_heun, fireplace.png, 1:0.1,2:0.2; texts longer than
    MAX_TEXT_CHARS lose the words they all start with ("…backdrop", "…background"), then their end."""
    if isinstance(values[0], float):
        return [f"{value:g}" for value in values]
    if isinstance(values[0], tuple):  # with_variations: (seed, weight) pairs
        return [",".join(f"{seed}:{weight:g}" for seed, weight in value) for value in values]
    texts = [PurePath(text).name if "/" in text or "\\" in text else text for text in map(str, values)]
    if any(len(text) > MAX_TEXT_CHARS for text in texts):
        shared = os.path.commonprefix(texts)
        start = shared.rfind(" ") + 1 if len(set(texts)) > 1 else 0  # back to the start of the word they differ in
        texts = [("…" if start else "") + text[start:] for text in texts]
        texts = [text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…" for text in texts]
    return [f'"{text}"' if " " in text or not text else text for text in texts]
