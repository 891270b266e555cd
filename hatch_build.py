"""Build hook: one source of truth for the configs, shipped inside the wheel.

conf/ and experiments/ stay at the top of the repository, where people read and edit them.
A wheel carries conf/ as sweeplab/conf/ and experiments/ as its `experiment` group,
sweeplab/conf/experiment/. An editable install gets nothing copied: sweeplab.configsearch
reads conf/ beside the package, and the search path plugin (hydra_plugins/sweeplab_configs)
serves experiments/ as the `experiment` group, as it does a user's own experiments/.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ConfigsIntoWheel(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"]["conf"] = "sweeplab/conf"
            build_data["force_include"]["experiments"] = "sweeplab/conf/experiment"
