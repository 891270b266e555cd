"""Model families: everything sweeplab needs to know about one, declared as data in one table.

A family names its diffusers pipeline classes, its denoiser, how its latents are laid out and
previewed, how it is guided, and which schedulers its img2img pipeline accepts, the way diffusers
pipelines declare `_callback_tensor_inputs` and schedulers `_compatibles`. Adding a family is
adding one entry to `FAMILIES`: no other module names a pipeline class.

This module imports nothing heavy, so a trial's family is checked before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

# diffusers' KarrasDiffusionSchedulers: every noise-prediction scheduler the SD 1.x/2.x and SDXL pipelines accept
DISCRETE_SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
)

# Linear latent->RGB preview maps: rgb = latent(h, w, c) @ factors + bias, then ((rgb + 1) / 2).clamp(0, 1).
SD1_LATENT_RGB = (
    ((0.3444, 0.1385, 0.0670), (0.1247, 0.4027, 0.1494), (-0.3192, 0.2513, 0.2103), (-0.1307, -0.1874, -0.7445)),
    (0.0, 0.0, 0.0),
)  # InvokeAI's SD 1.x/2.x preview map
SDXL_LATENT_RGB = (
    ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    (0.1084, -0.0175, -0.0011),
)  # ComfyUI's SDXL preview map
SD3_LATENT_RGB = (
    ((-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
     (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
     (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
     (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189)),
    (0.2394, 0.2135, 0.1925),
)  # ComfyUI's SD 3.x preview map
FLUX_LATENT_RGB = (
    ((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
     (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
     (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
     (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778)),
    (-0.0329, -0.0718, -0.0851),
)  # ComfyUI's FLUX.1 preview map


FLOOR = "int(steps * strength)"  # SD 1.x/2.x and SDXL: the steps kept, rounded down
FROM_SKIPPED = "steps - int(steps - steps * strength)"  # SD 3.x and FLUX: the steps skipped, rounded down


@dataclass(frozen=True)
class ModelFamily:
    name: str  # the `model.family` value and the `model_family` param
    title: str  # for people: messages, captions, the README's table
    img2img: str  # diffusers pipeline class that runs a trial
    inpaint: str | None  # pipeline class for a transparent init image; None: the family has none
    text2img: str  # pipeline class for text-to-image over the same modules
    folder_classes: tuple[str, ...]  # model_index.json `_class_name` values that mean this family
    denoiser: str  # the pipeline attribute holding the denoiser: "unet" or "transformer"
    latent_channels: int
    packed_latents: bool  # latents travel as 2x2 patch tokens (FLUX) and are unpacked before they are recorded
    size_multiple: int  # width and height must be multiples of this: the VAE's 8, times 2 for 2x2 patches
    steps_rule: str  # how the img2img pipeline's get_timesteps turns steps x strength into steps: FLOOR, FROM_SKIPPED
    latent_rgb: tuple  # the published linear latent->RGB map (factors, bias) for the real VAE
    guidance: str  # "cfg": classifier-free guidance; "distilled": guidance_scale is an input of the denoiser
    negative_prompt: bool  # whether the pipeline's default call uses a negative prompt
    schedulers: tuple[str, ...]  # scheduler classes the img2img pipeline accepts (their subclasses too)
    prompt_tokenizer: str  # the tokenizer whose window bounds the prompt (its overflow is warned about)

    def steps_taken(self, steps: int, strength: float) -> int:
        """The denoising steps the family's img2img pipeline takes (its get_timesteps)."""
        if self.steps_rule == FLOOR:
            return min(int(steps * strength), steps)
        return steps - int(max(steps - steps * strength, 0))

    def accepts(self, scheduler: type) -> bool:
        """Whether the img2img pipeline can run this scheduler class (or a sweeplab subclass of one)."""
        return any(cls.__name__ in self.schedulers for cls in scheduler.__mro__)

    @property
    def denoiser_name(self) -> str:
        return "UNet" if self.denoiser == "unet" else "transformer"


SD = ModelFamily(
    name="sd", title="Stable Diffusion 1.x/2.x",
    img2img="StableDiffusionImg2ImgPipeline", inpaint="StableDiffusionInpaintPipeline",
    text2img="StableDiffusionPipeline",
    folder_classes=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    denoiser="unet", latent_channels=4, packed_latents=False, size_multiple=8, latent_rgb=SD1_LATENT_RGB,
    guidance="cfg", negative_prompt=True, schedulers=DISCRETE_SCHEDULERS, prompt_tokenizer="tokenizer",
    steps_rule=FLOOR,
)
SDXL = ModelFamily(
    name="sdxl", title="Stable Diffusion XL",
    img2img="StableDiffusionXLImg2ImgPipeline", inpaint="StableDiffusionXLInpaintPipeline",
    text2img="StableDiffusionXLPipeline",
    folder_classes=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                    "StableDiffusionXLInpaintPipeline"),
    denoiser="unet", latent_channels=4, packed_latents=False, size_multiple=8, latent_rgb=SDXL_LATENT_RGB,
    guidance="cfg", negative_prompt=True, schedulers=DISCRETE_SCHEDULERS, prompt_tokenizer="tokenizer_2",
    steps_rule=FLOOR,
)
SD3 = ModelFamily(
    name="sd3", title="Stable Diffusion 3.x",
    img2img="StableDiffusion3Img2ImgPipeline", inpaint="StableDiffusion3InpaintPipeline",
    text2img="StableDiffusion3Pipeline",
    folder_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    denoiser="transformer", latent_channels=16, packed_latents=False, size_multiple=16, latent_rgb=SD3_LATENT_RGB,
    guidance="cfg", negative_prompt=True,
    schedulers=("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"), prompt_tokenizer="tokenizer",
    steps_rule=FROM_SKIPPED,
)
FLUX = ModelFamily(
    name="flux", title="FLUX.1",
    img2img="FluxImg2ImgPipeline", inpaint="FluxInpaintPipeline", text2img="FluxPipeline",
    folder_classes=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    denoiser="transformer", latent_channels=16, packed_latents=True, size_multiple=16, latent_rgb=FLUX_LATENT_RGB,
    # FLUX.1-dev takes guidance_scale as an embedding (distilled guidance), FLUX.1-schnell ignores it; a negative
    # prompt would need true CFG (twice the evaluations), which the pipeline's default call does not do.
    guidance="distilled", negative_prompt=False,
    # FluxImg2ImgPipeline passes sigmas and mu to set_timesteps, which FlowMatchHeunDiscreteScheduler refuses.
    schedulers=("FlowMatchEulerDiscreteScheduler",), prompt_tokenizer="tokenizer_2", steps_rule=FROM_SKIPPED,
)

FAMILIES = {family.name: family for family in (SD, SDXL, SD3, FLUX)}


def family_named(name: str, key: str = "model.family") -> ModelFamily:
    """The family called `name`; a one-line ConfigError naming the key and the families otherwise."""
    from sweeplab.errors import ConfigError

    if name not in FAMILIES:
        raise ConfigError(f"{key}: unknown model family '{name}'; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_pipeline_class(class_name: str) -> ModelFamily | None:
    """The family whose diffusers folders name this pipeline class in model_index.json."""
    for family in FAMILIES.values():
        if class_name in family.folder_classes:
            return family
    return None
