"""The real configs in conf/ and experiments/ compose and validate; bad values fail in one line."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields, is_dataclass

import pytest

from sweeplab.cli import preflight
from sweeplab.configsearch import ConfigOptions
from sweeplab.errors import ConfigError
from sweeplab.samplers import scheduler_class
from sweeplab.schema import SweeplabConfig
from sweeplab.trial import prepare_trial

SHIPPED = ConfigOptions()  # the options conf/ and experiments/ offer
SAMPLERS = ["ddim", "plms", "k_lms", "k_euler", "k_euler_a", "k_heun", "k_dpm_2", "k_dpm_2_a", "k_dpmpp_2m", "unipc"]


def test_defaults_compose_to_the_documented_values(compose_config):
    cfg = compose_config()
    assert cfg.model.name == "toy" and cfg.sampler.name == "k_lms" and cfg.init_image == "fireplace"
    assert (cfg.strength, cfg.steps, cfg.cfg_scale) == (0.75, 50, 7.5)
    assert cfg.device == "auto" and cfg.width is None


def test_every_required_sampler_and_model_exists():
    assert set(SAMPLERS) <= set(SHIPPED.of("sampler"))
    assert {"toy", "sd15", "sd21", "sdxl", "sd_turbo"} <= set(SHIPPED.of("model"))


@pytest.mark.parametrize("name", SAMPLERS)
def test_karras_variant_exists_exactly_where_the_scheduler_supports_it(compose_config, name):
    cls = scheduler_class(compose_config(f"sampler={name}").sampler.scheduler)
    supports = "use_karras_sigmas" in inspect.signature(cls.__init__).parameters
    assert (f"{name}_karras" in SHIPPED.of("sampler")) == supports
    if supports:
        karras = compose_config(f"sampler={name}_karras").sampler
        assert karras.scheduler == cls.__name__ and karras.options.use_karras_sigmas is True


@pytest.mark.parametrize("name", SHIPPED.of("sampler"))
def test_every_sampler_config_validates(compose_config, name):
    model = "sd35_medium" if name.startswith("flow_") else "toy"  # flow matching runs SD 3.x and FLUX; read, not loaded
    trial = prepare_trial(compose_config(f"sampler={name}", f"model={model}"))
    assert trial.spec.sampler == name


def test_demo_experiment_carries_its_grid(compose_config):
    cfg = compose_config("experiment=demo", with_hydra=True)
    assert (cfg.steps, cfg.width, cfg.height) == (10, 384, 384)
    assert dict(cfg.hydra.sweeper.params) == {"strength": "0.4,0.7", "sampler": "k_lms,k_heun"}
    assert cfg.hydra.runtime.choices.experiment == "demo"


def test_trial_size_defaults_to_init_image_rounded_to_8(compose_config, tmp_path):
    from PIL import Image

    path = tmp_path / "odd.png"
    Image.new("RGB", (203, 150), "red").save(path)
    spec = prepare_trial(compose_config(f"init_image={path}")).spec
    assert (spec.width, spec.height) == (200, 144)


def test_config_hash_is_stable_and_tracks_what_matters(compose_config):
    base = prepare_trial(compose_config("strength=0.7")).spec.config_hash
    assert prepare_trial(compose_config("strength=0.7")).spec.config_hash == base
    assert prepare_trial(compose_config("strength=0.4")).spec.config_hash != base
    assert prepare_trial(compose_config("strength=0.7", "sampler=k_heun")).spec.config_hash != base


def test_config_hash_follows_pixels_not_paths(compose_config, tmp_path):
    from sweeplab.sketches import draw_sketch

    draw_sketch("fireplace").save(tmp_path / "copy.png")
    from_file = prepare_trial(compose_config(f"init_image={tmp_path / 'copy.png'}")).spec
    from_sketch = prepare_trial(compose_config("init_image=fireplace")).spec
    assert from_file.config_hash == from_sketch.config_hash


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["strength=1.5"], "strength: 1.5 is out of range; allowed 0.0 to 1.0"),
        (["strength=abc"], "strength: "),
        (["steps=0"], "steps: 0 is out of range"),
        (["steps=10", "strength=0.05"], "strength x steps: 0.05 x 10 runs no denoising step"),
        (["init_image=/no/such/file.png"], "init_image: '/no/such/file.png' is neither an existing file"),
        (["width=100"], "width: 100 is not a positive multiple of 8"),
        (["model.path=/no/such/model"], "model.path: '/no/such/model' does not exist"),
        (["dtype=float8"], "dtype: 'float8' is unknown"),
        (["+sampler.options.use_karras_sigmas=true", "sampler=k_euler_a"], "sampler.options.use_karras_sigmas: not an option"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(compose_config, overrides, expected):
    with pytest.raises(ConfigError) as info:
        prepare_trial(compose_config(*overrides))
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message


def test_type_error_names_the_expected_type(compose_config):
    with pytest.raises(ConfigError, match=r"^steps: .*expected an integer$"):
        prepare_trial(compose_config("steps=ten"))


def test_model_path_that_is_no_model(compose_config, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b"not really safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    for path, expected in [
        (tmp_path / "folder", "without model_index.json"),
        (tmp_path / "weights.safetensors", "not a valid .safetensors file"),
        (tmp_path / "notes.txt", "is not a model"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            prepare_trial(compose_config(f"model.path={path}"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sampler=k_lmss"], "sampler: unknown option 'k_lmss'; did you mean 'k_lms'?"),
        (["-m", "sampler=k_lms,k_eular"], "sampler: unknown option 'k_eular'; did you mean 'k_euler'?"),
        (["model=sdx1"], "model: unknown option 'sdx1'; did you mean 'sdxl'?"),
        (["experiment=dmeo"], "experiment: unknown option 'dmeo'; did you mean 'demo'?"),
        (["strenght=0.5"], "strenght: unknown key; did you mean 'strength'?"),
    ],
)
def test_preflight_catches_unknown_names_with_a_suggestion(argv, expected):
    with pytest.raises(ConfigError) as info:
        preflight(argv)
    assert str(info.value).startswith(expected)


def test_preflight_accepts_valid_command_lines():
    preflight(["-m", "sampler=k_lms,k_heun", "model.path=/x", "hydra/launcher=basic", "+extra=1", "experiment=demo"])


@pytest.mark.parametrize("overrides", [
    [], ["experiment=demo"], ["experiment=invokeai_img2img"], ["experiment=tree_on_a_hill"],
    ["strength=1", "steps=7", "cfg_scale=3", "fit=yes", "width=64", "prompt=5"],
    ["with_variations=[12:0.1]", "variation_seed=4", "+sampler.options.use_karras_sigmas=true", "model.path=x"],
])
def test_fast_validation_equals_the_structured_merge(compose_config, overrides):
    """validate_config converts values without a structured merge; the result is the merge's, value for value."""
    from omegaconf import OmegaConf

    from sweeplab.schema import SweeplabConfig, validate_config

    cfg = compose_config(*overrides)
    merged = OmegaConf.merge(OmegaConf.structured(SweeplabConfig), OmegaConf.to_container(cfg, resolve=True))
    expected = OmegaConf.to_object(merged)
    got = validate_config(cfg)
    assert got == expected
    assert [type(getattr(got, f)) for f in SCHEMA_FIELDS] == [type(getattr(expected, f)) for f in SCHEMA_FIELDS]


SCHEMA_FIELDS = ("strength", "steps", "cfg_scale", "fit", "prompt", "width", "variation_seed")


def _float_keys(schema=SweeplabConfig, prefix: str = "") -> list[str]:
    """Every float key of the schema, nested groups included."""
    keys = []
    for spec in fields(schema):
        if spec.default_factory is not MISSING and is_dataclass(spec.default_factory):
            keys += _float_keys(spec.default_factory, f"{prefix}{spec.name}.")
        elif spec.type in (float, "float"):
            keys.append(prefix + spec.name)
    return keys


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", _float_keys())
def test_every_float_key_refuses_non_finite_values_in_one_line(compose_config, key, value):
    with pytest.raises(ConfigError) as info:
        prepare_trial(compose_config(f"{key}={value}"))
    assert str(info.value).startswith(f"{key}: {value} is not a finite number; allowed a finite number, e.g. ")
    assert "\n" not in str(info.value)


def test_the_float_keys_include_cfg_scale_and_strength():
    assert {"cfg_scale", "strength", "variation_amount"} <= set(_float_keys())


def test_safetensors_without_tensors_is_refused_before_diffusers_asks_the_hub(compose_config, tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes((2).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError) as info:
        prepare_trial(compose_config(f"model.path={empty}"))
    assert str(info.value) == (f"model.path: '{empty}' holds no tensors (an empty safetensors header); expected a "
                               "Stable Diffusion checkpoint")


def test_diffusers_folder_without_a_listed_component_names_the_component(compose_config, tmp_path):
    import shutil

    from sweeplab.toy import SHIPPED_DIR

    folder = tmp_path / "no-unet"
    shutil.copytree(SHIPPED_DIR, folder, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ConfigError) as info:
        prepare_trial(compose_config(f"model.path={folder}"))
    assert str(info.value) == (f"model.path: '{folder}' lacks the unet/ folder that its model_index.json lists; "
                               "expected a complete diffusers pipeline folder")


def test_an_unquoted_emoji_gets_a_line_that_says_to_quote_it():
    with pytest.raises(ConfigError) as info:
        preflight(["steps=10", "prompt=🔥"])
    assert str(info.value) == ("prompt: cannot parse the value '🔥' (LexerNoViableAltException); quote values with "
                               "spaces, emoji or brackets: 'prompt=\"🔥\"'")
    preflight(['prompt="🔥"'])  # the suggestion works


def test_a_null_config_group_is_named_as_null():
    with pytest.raises(ConfigError, match=r"^sampler: null leaves no sampler config; allowed: ddim, "):
        preflight(["sampler=null"])
    preflight(["experiment=null"])  # the default: no named sweep


def test_a_misspelt_key_in_an_experiments_sweep_params_fails_in_one_line(tmp_path, monkeypatch):
    # a user's experiment in the working folder's experiments/, as sweeplab finds it
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "typo.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      strenght: 0.3,0.5\n      seed: 1,2\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        preflight(["-m", "experiment=typo"])
    assert str(info.value).startswith(
        "experiment typo: hydra.sweeper.params.strenght: unknown key; did you mean 'strength'?")
    preflight(["-m", "experiment=demo"])


def test_a_size_that_cannot_fit_is_refused_before_loading(compose_config):
    from sweeplab.trial import free_memory

    with pytest.raises(ConfigError) as info:
        prepare_trial(compose_config("width=8192", "height=1000000", "device=cpu"))
    message = str(info.value)
    assert message.startswith("width x height: 8192x1000000 needs at least 4882.8 GiB on cpu (the VAE at full "
                              "resolution), more than the ")  # 32 toy VAE channels x 4 bytes x the measured peak, 5
    assert message.endswith(" GiB free; use a smaller width/height, e.g. fit=true width=512 height=512")
    assert free_memory("cpu") > 0
    prepare_trial(compose_config("width=512", "height=512", "device=cpu"))  # 96 MiB: fits anywhere


def test_unusually_many_steps_warn_with_the_steps_the_run_will_take(compose_config, caplog):
    trial = prepare_trial(compose_config("steps=600", "strength=0.5"))
    expected = "steps: 600 is unusually many (more than 500); this trial will take 300 denoising steps"
    assert expected in trial.warnings
    assert expected in caplog.text  # said before the run starts, not only after it
    assert not any("unusually many" in w for w in prepare_trial(compose_config("steps=500")).warnings)
