"""Scheduler classes by name: sweeplab's own corrections first, then diffusers'.

`KDiffusionLMSScheduler` is diffusers' `LMSDiscreteScheduler` with k-diffusion's order ramp in
img2img. k-diffusion's `sample_lms` (what InvokeAI's k_lms ran) gets the truncated sigma list,
so its order grows from 1 with the steps actually taken. diffusers counts the order from the
full schedule's step index, so an img2img run that starts at index 16 integrates a fourth-order
Lagrange polynomial with one derivative, and low strengths keep visible noise
(huggingface/diffusers#5630). Text-to-image and strength 1.0, which start at index 0, are unchanged.
"""

from __future__ import annotations

import inspect

import diffusers
from diffusers import LMSDiscreteScheduler, SchedulerMixin


class KDiffusionLMSScheduler(LMSDiscreteScheduler):
    """LMS whose order never exceeds the number of derivatives this run has collected."""

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        return super().get_lms_coefficient(min(order, len(self.derivatives)), t, current_order)


OWN_SCHEDULERS = {cls.__name__: cls for cls in (KDiffusionLMSScheduler,)}


def scheduler_class(name: str) -> type[SchedulerMixin] | None:
    """The scheduler class called `name`, sweeplab's or diffusers'; None if there is none."""
    cls = OWN_SCHEDULERS.get(name) or getattr(diffusers, name, None)
    return cls if inspect.isclass(cls) and issubclass(cls, SchedulerMixin) else None


def sampler_names(family) -> list[str]:
    """The shipped `sampler=` options whose scheduler a sweeplab.families.ModelFamily accepts, for messages."""
    from omegaconf import OmegaConf

    from sweeplab.configsearch import CONF_DIR

    names = []
    for path in sorted((CONF_DIR / "sampler").glob("*.yaml")):
        cls = scheduler_class(str(OmegaConf.load(path).get("scheduler", "")))
        if cls is not None and family.accepts(cls):
            names.append(path.stem)
    return names
