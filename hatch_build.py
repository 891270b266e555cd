"""Build hook: one source of truth for the configs, shipped inside the wheel.

conf/ and experiments/ stay at the top of the repository, where people read and edit them.
A wheel carries conf/ as sweeplab/conf/; its `experiment` entry is a link to ../experiments,
which the build follows, so the experiments arrive as real files of the `experiment` group.
An editable install gets nothing copied: `sweeplab.cli` reads conf/ beside the package.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ConfigsIntoWheel(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"]["conf"] = "sweeplab/conf"
