"""A sweep's axes: a grid of keys (every combination) times zipped keys (values paired by position).

`steps=50,29 strength=0.4,0.7` in a grid is four trials; zipped it is two, 50 at 0.4 and 29 at 0.7, as the
InvokeAI doc's compensated runs pair them. The vocabulary is hydra-list-sweeper's, in sweeplab's own sweeper:
`hydra.sweeper.grid_params` (or Hydra's `params`) for the grid, `hydra.sweeper.list_params` for the zipped keys.
The command line's overrides join the grid after the config's, as in Hydra's basic sweeper: a later value of a
key replaces an earlier one, and a command-line value of a zipped key takes it out of the pairs.

The sweeper, `python -m sweeplab.plan`, the pre-check and the parent run's params all read a sweep here, so
they agree on its trials. Torch-free: the Hydra plugin module imports this while Hydra scans for plugins.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Quote, QuotedString
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from sweeplab.errors import ConfigError

GRID_FIELDS = ("params", "grid_params")  # Hydra's basic sweeper's name for the grid, then hydra-list-sweeper's
ZIPPED_FIELD = "list_params"
SWEEPER_FIELDS = (*GRID_FIELDS, ZIPPED_FIELD)


@dataclass(frozen=True)
class SweepAxes:
    """What a sweep runs: the grid's overrides times the zipped pairs."""

    grid: dict[str, Override]  # each grid key's override, the config's first; a later one of a key replaced it
    zipped: dict[str, list[str]]  # each zipped key's values as override text, all lists of one length

    def trials(self) -> list[list[str]]:
        """Each trial's overrides (`key=value`): the grid's keys in order, then the zipped keys."""
        axes = [[(f"{key}={value}",) for value in _listed(key, override)] for key, override in self.grid.items()]
        pairs = self._pairs()
        combos = itertools.product(*axes, *([pairs] if pairs else []))
        return [[line for part in combo for line in part] for combo in combos]

    def swept_values(self) -> dict[str, str]:
        """Each key that takes more than one value, with its values comma-separated as the sweep runs them
        (a zipped key's values in the order of its pairs); a grid sweep that cannot be listed here, as written."""
        swept = {}
        for override in self.grid.values():
            if override.is_sweep_override():
                try:
                    swept[override.key_or_group] = ",".join(override.sweep_string_iterator())
                except Exception:  # noqa: BLE001 - glob() lists options only with Hydra's config loader
                    swept[override.key_or_group] = override.get_value_string()
        pairs = self._pairs()
        if len(pairs) > 1:
            for column, key in enumerate(self.zipped):
                swept[key] = ",".join(pair[column].partition("=")[2] for pair in pairs)
        return swept

    def zipped_keys(self) -> list[str]:
        """The keys paired by position, when there is more than one pair to pair."""
        return list(self.zipped) if len(self._pairs()) > 1 else []

    def _pairs(self) -> list[tuple[str, ...]]:
        """One tuple of `key=value` per position; pairs that came out the same (a command-line value replaced one
        of their keys) run once."""
        columns = [[f"{key}={value}" for value in values] for key, values in self.zipped.items()]
        return list(dict.fromkeys(zip(*columns)))


def sweep_axes(config: DictConfig) -> SweepAxes:
    """The axes of a composed multirun config: its `hydra.sweeper`, then the command line's task overrides."""
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None) or {}
    return read_axes(sweeper, list(OmegaConf.select(config, "hydra.overrides.task", default=None) or []))


def read_axes(sweeper: Mapping, arguments: Sequence[str], config_loader=None) -> SweepAxes:
    """The axes of a sweep from the sweeper's config (`hydra.sweeper`) and the command line's task overrides.

    Raises ConfigError, one line, for a key given twice in the config, a key both gridded and zipped, or zipped
    lists of different lengths. `config_loader` lets `glob()` list a config group's options, as in Hydra.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    grid: dict[str, Override] = {}
    given_in: dict[str, str] = {}
    for field in GRID_FIELDS:
        for key, value in _entries(sweeper, field):
            if key in grid:
                raise ConfigError(f"{key}: in both hydra.sweeper.{given_in[key]} and hydra.sweeper.{field}; "
                                  "give it in one of them")
            grid[key], given_in[key] = _parse(parser, field, key, value), field
    zipped = {}
    for key, value in _entries(sweeper, ZIPPED_FIELD):
        if key in grid:
            raise ConfigError(f"{key}: both gridded (hydra.sweeper.{given_in[key]}) and zipped "
                              f"(hydra.sweeper.{ZIPPED_FIELD}); give it in one of them")
        zipped[key] = _listed(f"hydra.sweeper.{ZIPPED_FIELD}.{key}", _parse(parser, ZIPPED_FIELD, key, value))
    if len({len(values) for values in zipped.values()}) > 1:
        lengths = ", ".join(f"{key}: {len(values)} values" for key, values in zipped.items())
        raise ConfigError(f"hydra.sweeper.{ZIPPED_FIELD}: zipped lists differ in length ({lengths}); they pair "
                          "their values by position, so give each as many")
    for override in parser.parse_overrides(list(arguments)):
        zipped.pop(override.key_or_group, None)  # the command line's value replaces the key in the pairs
        grid[override.get_key_element()] = override
    return SweepAxes(grid, zipped)


def _entries(sweeper: Mapping, field: str) -> list[tuple[str, Any]]:
    """A sweeper field's keys and plain values (a config's lists as Python lists); none if the field is absent."""
    node = sweeper.get(field) if sweeper is not None else None
    if not node:
        return []
    return list((OmegaConf.to_container(node) if OmegaConf.is_config(node) else node).items())


def _parse(parser: OverridesParser, field: str, key: str, value: Any) -> Override:
    """A sweeper entry as the override `key=value`: a string as Hydra's sweep syntax (`0.4,0.7`, `range(1,4)`),
    a list as its values (strings quoted, so `[a b, c]` is two texts)."""
    if isinstance(value, list):
        text = ",".join(Override._get_value_element_as_str(_quoted(item)) for item in value)
    else:
        text = value if isinstance(value, str) else Override._get_value_element_as_str(value)
    if not text:
        raise ConfigError(f"hydra.sweeper.{field}.{key}: no values; give one or more, e.g. {key}: 1,2")
    try:
        (override,) = parser.parse_overrides([f"{key}={text}"])
    except OverrideParseException as err:
        raise ConfigError(f"hydra.sweeper.{field}.{key}: cannot parse {text!r} "
                          f"({str(err).strip().splitlines()[0]})") from None
    return override


def _quoted(item: Any) -> Any:
    """A list's text item stays one text when written out (`a b`, `0.4` as text, `x,y`)."""
    return QuotedString(item, Quote.double) if isinstance(item, str) else item


def _listed(where: str, override: Override) -> list[str]:
    """An override's values as override text: a sweep's values, or its one value."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    if not override.is_discrete_sweep():
        raise ConfigError(f"{where}: {override.get_value_string()} is not a list of values; sweeplab's sweeper "
                          "lists them: a,b,c or range(start,stop)")
    return list(override.sweep_string_iterator())
