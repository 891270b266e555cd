"""Model families through one seam: each family's checks fail in one line before any model loads, and what MLflow
shows names the checkpoint actually used."""

from __future__ import annotations

import json
import shutil

import pytest

from sweeplab.errors import ConfigError
from sweeplab.families import FAMILIES
from sweeplab.samplers import sampler_names, scheduler_class
from sweeplab.toy import toy_model_dir
from sweeplab.trial import prepare_trial

SMALL = ("width=64", "height=64", "steps=4", "strength=0.5")


@pytest.fixture(scope="module")
def toy_copy(tmp_path_factory):
    """The toy model as a user's own diffusers folder under another name."""
    folder = tmp_path_factory.mktemp("models") / "my-sd-model"
    shutil.copytree(toy_model_dir(), folder)
    return folder


def test_every_family_names_classes_diffusers_has_and_samplers_it_accepts():
    import diffusers

    for family in FAMILIES.values():
        for class_name in (family.img2img, family.inpaint, family.text2img, *family.folder_classes):
            assert hasattr(diffusers, class_name), class_name
        assert sampler_names(family), family.name
        assert len(family.latent_rgb[0]) == family.latent_channels and len(family.latent_rgb[1]) == 3
    assert "flow_euler" in sampler_names(FAMILIES["flux"]) and "flow_heun" not in sampler_names(FAMILIES["flux"])
    assert set(sampler_names(FAMILIES["sd3"])) == {"flow_euler", "flow_heun"}
    assert "k_lms" in sampler_names(FAMILIES["sd"]) and "flow_euler" not in sampler_names(FAMILIES["sdxl"])
    assert FAMILIES["sd"].accepts(scheduler_class("KDiffusionLMSScheduler"))  # sweeplab's subclass of LMS


def test_a_folder_model_is_logged_by_its_name_and_family(compose_config, toy_copy):
    trial = prepare_trial(compose_config(f"model.path={toy_copy}", *SMALL))
    params = trial.spec.params()
    assert (params["model"], params["model_family"]) == ("my-sd-model", "sd")
    toy = prepare_trial(compose_config(*SMALL))
    assert (toy.spec.params()["model"], toy.spec.params()["model_family"]) == ("toy", "sd")
    assert trial.spec.config_hash != toy.spec.config_hash


def test_a_sampler_the_family_cannot_run_fails_naming_the_family_and_its_samplers(compose_config, toy_copy):
    with pytest.raises(ConfigError) as failed:
        prepare_trial(compose_config(f"model.path={toy_copy}", "sampler=flow_euler", *SMALL))
    message = str(failed.value)
    assert message.startswith("sampler: flow_euler (FlowMatchEulerDiscreteScheduler) cannot run Stable Diffusion "
                              "1.x/2.x models (model family sd); samplers for sd: ddim, ")
    assert "k_lms" in message and "\n" not in message


def test_a_declared_family_must_match_the_files(compose_config, toy_copy):
    with pytest.raises(ConfigError, match=r"^model.family: 'flux' but my-sd-model is a Stable Diffusion 1.x/2.x "
                                          r"model \('sd'\); drop model.family or set model.family=sd$"):
        prepare_trial(compose_config(f"model.path={toy_copy}", "model.family=flux", *SMALL))
    with pytest.raises(ConfigError, match=r"^model.family: unknown model family 'sd4'; allowed: sd, sdxl, sd3, flux$"):
        prepare_trial(compose_config(f"model.path={toy_copy}", "model.family=sd4", *SMALL))


def test_a_folder_of_another_pipeline_is_refused_in_one_line(compose_config, toy_copy, tmp_path):
    other = tmp_path / "kandinsky"
    shutil.copytree(toy_copy, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(ConfigError, match=r"^model: kandinsky is a KandinskyPipeline; sweeplab runs Stable Diffusion "
                                          r"1.x/2.x, Stable Diffusion XL, Stable Diffusion 3.x, FLUX.1 img2img"):
        prepare_trial(compose_config(f"model.path={other}", *SMALL))


def test_hub_models_need_their_family_when_the_cache_cannot_tell(compose_config, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))  # empty: no model_index.json to read
    with pytest.raises(ConfigError, match=r"^model.family: not set, and someone/model is not in the Hugging Face "
                                          r"cache to read it from; set model.family= one of sd, sdxl, sd3, flux$"):
        prepare_trial(compose_config("model.hub_id=someone/model", "model.builtin=null", *SMALL))
    with pytest.raises(ConfigError, match=r"^negative_prompt: FLUX.1 models take no negative prompt"):
        prepare_trial(compose_config("model=flux_dev", "sampler=flow_euler", "negative_prompt=blurry", *SMALL))
    trial = prepare_trial(compose_config("model=flux_dev", "sampler=flow_euler", "width=64", "height=64"))
    assert trial.spec.params()["model"] == "black-forest-labs/FLUX.1-dev"
    with pytest.raises(ConfigError, match=r"^width: 72 is not a positive multiple of 16"):
        prepare_trial(compose_config("model=flux_dev", "sampler=flow_euler", "width=72", "height=64"))


EULER = {"sd": "k_euler", "sdxl": "k_euler", "sd3": "flow_euler", "flux": "flow_euler"}
HEUN = {"sd": "k_heun", "sdxl": "k_heun", "sd3": "flow_heun"}  # FLUX's img2img pipeline refuses Heun


@pytest.fixture(scope="module")
def models():
    from sweeplab.models import PipelineCache

    return PipelineCache()


def run_tiny(compose_config, models, folder, *overrides):
    import torch

    from sweeplab.runner import run_trial

    trial = prepare_trial(compose_config(f"model.path={folder}", "width=64", "height=64", "steps=4", "seed=7",
                                         "prompt=a red circle", *overrides))
    return trial, run_trial(trial, models.get(trial.spec.model_source, "cpu", torch.float32))


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_every_family_runs_a_trial_through_model_path(compose_config, models, tiny_model_dir, family):
    folder = tiny_model_dir(family)
    channels = FAMILIES[family].latent_channels
    for strength in (0.5, 1.0):
        trial, result = run_tiny(compose_config, models, folder, f"sampler={EULER[family]}", f"strength={strength}")
        assert trial.spec.params()["model_family"] == family
        assert result.steps_taken == int(4 * strength)  # diffusers' get_timesteps, every family
        assert result.denoiser_evals == result.steps_taken  # a first-order sampler: one evaluation per step
        assert result.start_latent.shape == (channels, 8, 8)  # FLUX's packed tokens unpacked
        assert result.step_latents.shape == (result.steps_taken, channels, 8, 8)
        assert result.start_image.size == (8, 8) and len(result.step_images) == result.steps_taken
        assert result.output.size == (64, 64)
    decoded = run_tiny(compose_config, models, folder, f"sampler={EULER[family]}", "preview.method=vae")[1]
    assert decoded.start_image.size == (64, 64)  # the family's VAE decodes its own latents (16-channel ones too)


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_a_second_order_sampler_counts_steps_and_evaluations_apart(compose_config, models, tiny_model_dir, family):
    _, heun = run_tiny(compose_config, models, tiny_model_dir(family), f"sampler={HEUN[family]}", "strength=0.75")
    assert (heun.steps_taken, heun.denoiser_evals) == (3, 5)  # Heun: 2 evaluations per step, the last one Euler


def test_flux_refuses_heun_and_negative_prompts_before_loading(compose_config, tiny_model_dir):
    folder = tiny_model_dir("flux")
    with pytest.raises(ConfigError, match=r"^sampler: flow_heun \(FlowMatchHeunDiscreteScheduler\) cannot run FLUX.1 "
                                          r"models \(model family flux\); samplers for flux: flow_euler$"):
        prepare_trial(compose_config(f"model.path={folder}", "sampler=flow_heun", "width=64", "height=64"))


def test_a_sweep_over_two_families_logs_steps_evaluations_and_bytes_of_its_process(
        sweeplab_cli, tmp_path, tiny_model_dir, compose_config, models):
    """`sweeplab -m model.path=SD3,FLUX`: each trial in its family's pipeline, in another process than this one."""
    import io

    from mlflow import MlflowClient

    folders = {family: tiny_model_dir(family) for family in ("sd3", "flux")}
    done = sweeplab_cli("-m", f"model.path={folders['sd3']},{folders['flux']}", "sampler=flow_euler", "width=64",
                        "height=64", "steps=4", "strength=0.5", "seed=7", "prompt=a red circle",
                        "tracking.experiment=families")
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("families")
    runs = [run for run in client.search_runs([experiment.experiment_id]) if "model_family" in run.data.params]
    by_family = {run.data.params["model_family"]: run for run in runs}
    assert sorted(by_family) == ["flux", "sd3"]
    for family, run in by_family.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["model"] == folders[family].name
        assert (run.data.metrics["steps_taken"], run.data.metrics["denoiser_evals"]) == (2, 2)
        logged = client.download_artifacts(run.info.run_id, "output.png", str(tmp_path / family))
        _, here = run_tiny(compose_config, models, folders[family], "sampler=flow_euler", "strength=0.5")
        buffer = io.BytesIO()
        here.output.save(buffer, format="PNG")
        assert open(logged, "rb").read() == buffer.getvalue()  # the same bytes in two processes


def test_steps_taken_target_follows_the_familys_own_step_rule(compose_config, models, tiny_model_dir):
    """SD keeps int(steps x strength) steps; SD 3.x and FLUX keep steps - int(steps - steps x strength)."""
    sd3, result = run_tiny(compose_config, models, tiny_model_dir("sd3"), "sampler=flow_euler", "strength=0.7",
                           "steps_taken_target=20")
    assert (sd3.spec.steps, result.steps_taken) == (28, 20)  # 28 - int(8.4); 29 steps would take 21 here
    toy = prepare_trial(compose_config("strength=0.7", "steps_taken_target=20", *SMALL[:2]))
    assert toy.spec.steps == 29  # int(29 x 0.7) = 20 on SD
    _, plain = run_tiny(compose_config, models, tiny_model_dir("sd3"), "sampler=flow_euler", "strength=0.7",
                        "steps=29")
    assert plain.steps_taken == FAMILIES["sd3"].steps_taken(29, 0.7) == 21
