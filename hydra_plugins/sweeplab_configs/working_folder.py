"""Users' own configs on sweeplab's search path (see sweeplab.configsearch).

A folder's experiments/NAME.yaml becomes `experiment=NAME` although Hydra's layout would want
experiment/NAME.yaml: a config source with its own scheme maps the group names to the folders.
It serves nothing else, so a folder full of runs (multirun/, mlartifacts/) adds no groups.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from sweeplab.configsearch import FOLDER_GROUPS, FOLDER_SCHEME, is_sweeplab_search_path, option_folders


class SweeplabSearchPathPlugin(SearchPathPlugin):
    """Appends the option folders to sweeplab's search path; other Hydra apps are left alone."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not is_sweeplab_search_path(search_path):
            return
        for folder in option_folders(Path.cwd()):
            search_path.append(provider="sweeplab", path=f"{FOLDER_SCHEME}://{folder}")


class WorkingFolderConfigSource(ConfigSource):
    """A folder's experiments/, model/ and sampler/ as the groups experiment, model and sampler."""

    @staticmethod
    def scheme() -> str:
        return FOLDER_SCHEME

    def _location(self, config_path: str) -> Optional[Path]:
        """Where a group or config path ('experiment', 'experiment/demo.yaml') lives; None outside the groups."""
        group, _, rest = config_path.partition("/")
        return Path(self.path, FOLDER_GROUPS[group], rest) if group in FOLDER_GROUPS else None

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        if config_path == "":
            return self.available()
        location = self._location(config_path)
        return location is not None and location.is_dir()

    def is_config(self, config_path: str) -> bool:
        location = self._location(self._normalize_file_name(config_path))
        return location is not None and location.is_file()

    def load_config(self, config_path: str) -> ConfigResult:
        location = self._location(self._normalize_file_name(config_path))
        if location is None or not location.is_file():
            raise ConfigLoadError(f"Config not found : {location or config_path}")
        return ConfigResult(config=OmegaConf.load(location), path=self.full_path(), provider=self.provider,
                            header=self._get_header_dict(location.read_text(encoding="utf-8")))

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        if config_path == "":
            groups = [group for group in FOLDER_GROUPS if self.is_group(group)]
            return groups if results_filter in (None, ObjectType.GROUP) else []
        found: List[str] = []
        for name in os.listdir(self._location(config_path)):
            self._list_add_result(found, f"{config_path}/{name}", name, results_filter)
        return sorted(set(found))
