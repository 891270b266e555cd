"""Where sweeplab's configs are found: the shipped conf/, then the user's own folders.

conf/ and experiments/ sit at the top of the repository, where people read and edit them; a wheel
carries them inside the package as sweeplab/conf/, experiments/ becoming its `experiment` group
(hatch_build.py). Any other folder adds options the way the repository's experiments/ does:
experiments/NAME.yaml is `experiment=NAME`, model/NAME.yaml and sampler/NAME.yaml are options of
those groups. The Hydra plugin in hydra_plugins/sweeplab_configs/ puts the working directory (and,
in a source checkout, the repository top) on Hydra's search path after conf/, so a shipped name wins;
Hydra's own `--config-dir D` and `hydra.searchpath=[D]` add D/experiment/NAME.yaml as everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from sweeplab.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
# A folder's subfolders that add options, by the config group they add to.
FOLDER_GROUPS = {"experiment": "experiments", "model": "model", "sampler": "sampler"}
FOLDER_SCHEME = "sweeplab-folder"  # search path entries served by hydra_plugins/sweeplab_configs
PRIMARY_CONFIG = "config"


def _conf_dir() -> Path:
    """conf/ inside the installed package (a wheel), else at the top of the repository (editable install)."""
    installed = PACKAGE_DIR / "conf"
    return installed if (installed / f"{PRIMARY_CONFIG}.yaml").is_file() else PACKAGE_DIR.parent / "conf"


CONF_DIR = _conf_dir()


def option_folders(working_dir: Path) -> list[Path]:
    """Folders laid out like a working folder, searched after conf/: a source checkout's top (its
    experiments/; a wheel has them in conf/ already), then the working directory."""
    folders = [] if CONF_DIR.parent == PACKAGE_DIR else [CONF_DIR.parent]
    working_dir = working_dir.resolve()
    return folders if working_dir in folders else [*folders, working_dir]


def is_sweeplab_search_path(search_path) -> bool:
    """Whether a Hydra search path is sweeplab's (its primary entry is CONF_DIR), not another app's."""
    return any(
        entry.provider == "main" and Path(entry.path.removeprefix("file://")).resolve() == CONF_DIR
        for entry in search_path.get_path()
    )


class ConfigOptions:
    """The options of each config group on the search path a command line composes.

    That is conf/, the option folders above, `--config-dir` and `hydra.searchpath=[...]`, built by
    Hydra's own code, so the pre-check allows exactly what Hydra will find.
    """

    def __init__(self, config_dir: str | None = None, config_name: str | None = None, overrides: Sequence[str] = ()):
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra._internal.utils import create_config_search_path
        from hydra.core.config_search_path import SearchPathQuery

        search_path = create_config_search_path(str(CONF_DIR))
        if config_dir is not None:  # where and how Hydra adds it
            folder = os.path.abspath(config_dir)
            if not os.path.isdir(folder):
                raise ConfigError(f"--config-dir: '{config_dir}' is not a folder")
            search_path.prepend("command-line", f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
        self._loader = ConfigLoaderImpl(config_search_path=search_path)
        self._config_name = config_name or PRIMARY_CONFIG
        self._searchpath = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath"]
        self._sweepers: dict[tuple[str, ...], dict] = {}  # `sweeper` by its overrides: each composes once

    def of(self, group: str) -> list[str]:
        from hydra.errors import HydraException

        try:
            return sorted(self._loader.get_group_options(group, config_name=self._config_name,
                                                         overrides=self._searchpath))
        except HydraException as err:
            raise ConfigError(f"hydra.searchpath: {str(err).strip().splitlines()[0]}") from None

    def sweeper(self, overrides: Sequence[str]) -> dict:
        """`hydra.sweeper` (its grid and zipped lists) as Hydra composes it for a sweep with these overrides (an
        experiment, `hydra.sweeper.*`); empty where Hydra cannot compose it, which Hydra then reports itself."""
        from hydra.errors import HydraException
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        key = tuple(overrides)
        if key not in self._sweepers:
            try:
                composed = self._loader.load_configuration(self._config_name, [*overrides, *self._searchpath],
                                                           run_mode=RunMode.MULTIRUN)
                self._sweepers[key] = OmegaConf.to_container(composed.hydra.sweeper)
            except HydraException:
                self._sweepers[key] = {}
        return self._sweepers[key]
