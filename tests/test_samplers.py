"""k_lms in img2img: k-diffusion's order ramp from the first step taken, unchanged from index 0."""

from __future__ import annotations

import torch
from diffusers import LMSDiscreteScheduler

from sweeplab.samplers import KDiffusionLMSScheduler, scheduler_class
from sweeplab.toy.build import SD15_SCHEDULER_CONFIG


def _run(cls, begin: int, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    scheduler = cls.from_config(SD15_SCHEDULER_CONFIG)
    scheduler.set_timesteps(20)
    scheduler.set_begin_index(begin)
    sample, samples = torch.ones(1, 4, 2, 2), []
    for t, output in zip(scheduler.timesteps[begin:], outputs):
        sample = scheduler.step(output, t, sample).prev_sample
        samples.append(sample)
    return samples


def test_img2img_starts_with_an_euler_step():
    """Strength 0.2 at 20 steps starts at index 16: the first step has one derivative, so it is Euler's."""
    eps = torch.full((1, 4, 2, 2), 0.5)
    scheduler = KDiffusionLMSScheduler.from_config(SD15_SCHEDULER_CONFIG)
    scheduler.set_timesteps(20)
    euler = torch.ones(1, 4, 2, 2) + (scheduler.sigmas[17] - scheduler.sigmas[16]) * eps  # d = eps for epsilon
    assert torch.allclose(_run(KDiffusionLMSScheduler, 16, [eps])[0], euler, atol=1e-5)
    # diffusers' own LMS integrates a fourth-order polynomial with that one derivative
    assert not torch.allclose(_run(LMSDiscreteScheduler, 16, [eps])[0], euler, atol=1e-3)


def test_from_the_first_index_it_is_diffusers_lms():
    outputs = [torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    ours, theirs = _run(KDiffusionLMSScheduler, 0, outputs), _run(LMSDiscreteScheduler, 0, outputs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_scheduler_names_resolve_to_sweeplab_then_diffusers():
    assert scheduler_class("KDiffusionLMSScheduler") is KDiffusionLMSScheduler
    assert scheduler_class("LMSDiscreteScheduler") is LMSDiscreteScheduler
    assert scheduler_class("StableDiffusionPipeline") is None and scheduler_class("nope") is None
