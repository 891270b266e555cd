"""Real checkpoint loading paths, exercised offline: diffusers folders (SDXL too), single files, hub ids."""

from __future__ import annotations

import time

import pytest
import torch

from sweeplab.errors import ConfigError
from sweeplab.models import PipelineCache, resolve_model_source
from sweeplab.runner import run_trial
from sweeplab.schema import ModelConfig
from sweeplab.trial import prepare_trial


@pytest.fixture(scope="module")
def tiny_sdxl_folder(tmp_path_factory, toy_model):
    """A tiny SDXL pipeline (two text encoders, text_time embeddings) saved in diffusers format."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = toy_model.pipe.tokenizer
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80, cross_attention_dim=64,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=128,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
        vocab_size=len(tokenizer), hidden_act="gelu", projection_dim=32,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config), text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    ).save_pretrained(folder)
    return folder


def test_sdxl_folder_loads_the_sdxl_img2img_pipeline_and_runs(compose_config, tiny_sdxl_folder):
    trial = prepare_trial(compose_config(f"model.path={tiny_sdxl_folder}", "width=64", "height=64", "steps=4",
                                         "strength=0.5", "sampler=k_euler", "preview.method=vae"))
    assert trial.spec.model_source.kind == "folder"
    loaded = PipelineCache().get(trial.spec.model_source, "cpu", torch.float32)
    assert type(loaded.pipe).__name__ == "StableDiffusionXLImg2ImgPipeline" and loaded.family.name == "sdxl"
    result = run_trial(trial, loaded)
    assert (result.steps_taken, result.denoiser_evals) == (2, 2)
    assert result.start_latent.shape == (4, 32, 32)  # this tiny VAE downsamples 2x
    assert result.output.size == (64, 64)


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ConfigError, match=r"^model.path: '.*model.ckpt' is a pickle checkpoint"):
        resolve_model_source(ModelConfig(name="mine", path=str(path)))


def _one_error_line(done) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Loading pipeline components" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        # the hub's address answers nothing here (discard port): the network path, without HF_HUB_OFFLINE
        ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, "http://127.0.0.1:9 cannot be reached: "),
    ],
)
def test_hub_model_without_network_or_cache_fails_in_one_line(sweeplab_cli, tmp_path, env, why):
    cache = tmp_path / "hf-cache"
    started = time.monotonic()
    done = sweeplab_cli("model=sd15", "steps=4", env={"HF_HUB_CACHE": str(cache), **env})
    print(f"model=sd15 without network failed after {time.monotonic() - started:.1f} s (process start included)")
    error = _one_error_line(done)
    assert error.startswith(f"sweeplab: error: model: 'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the "
                            f"Hugging Face cache ({cache}) and there is no network ({why}")
    assert "HF_HUB_OFFLINE unset" in error and "model.path=" in error


def test_a_folder_with_only_fp16_weights_suggests_the_variant(toy_model, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    folder = tmp_path / "toy-fp16"
    StableDiffusionImg2ImgPipeline(**toy_model.pipe.components).save_pretrained(folder, variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    with pytest.raises(ConfigError) as info:
        resolve_model_source(ModelConfig(name="mine", path=str(folder)))
    assert str(info.value).startswith(f"model.path: '{folder}' has only 'fp16' weights in ")
    assert str(info.value).endswith("; set model.variant=fp16")

    source = resolve_model_source(ModelConfig(name="mine", path=str(folder), variant="fp16"))
    loaded = PipelineCache().get(source, "cpu", torch.float32)  # the suggestion loads it
    assert loaded.pipe.unet.dtype == torch.float32


def test_trial_pipelines_keep_every_module_dtype(tiny_model_dir):
    """A trial's pipeline object shares the loaded modules as they are: diffusers' `from_pipe` would cast them all
    to float32 (or all to one dtype, undoing the float32 layers T5 keeps in a half-precision pipeline)."""
    source = resolve_model_source(ModelConfig(name="tiny-sd3", path=str(tiny_model_dir("sd3"))))
    loaded = PipelineCache().get(source, "cpu", torch.float16)

    def dtypes() -> dict[str, torch.dtype]:
        return {f"{name}.{param}": tensor.dtype for name, module in loaded.pipe.components.items()
                if isinstance(module, torch.nn.Module) for param, tensor in module.named_parameters()}

    before = dtypes()
    assert set(before.values()) == {torch.float16, torch.float32}  # T5 keeps its `wo` layers in float32
    trial_pipe = loaded.for_trial("text2img", loaded.pipe.scheduler)
    assert type(trial_pipe).__name__ == "StableDiffusion3Pipeline" and trial_pipe.transformer is loaded.pipe.transformer
    assert loaded.for_trial("img2img", loaded.pipe.scheduler).vae is loaded.pipe.vae
    assert dtypes() == before
