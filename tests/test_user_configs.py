"""Users' own configs and Hydra's own flags: a working folder's experiments/, model/ and sampler/,
--config-dir and hydra.searchpath compose, the pre-check allows them, and flags pass through."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sweeplab.cli import preflight
from sweeplab.configsearch import CONF_DIR, ConfigOptions
from sweeplab.errors import ConfigError
from sweeplab.trial import prepare_trial

MINE = "# @package _global_\nsteps: 3\nhydra:\n  sweeper:\n    params:\n      seed: 1,2\n"
MY_MODEL = "defaults:\n  - /sweeplab_model_schema\n  - _self_\nname: my_toy\nbuiltin: toy\n"
MY_SAMPLER = "name: my_euler\nscheduler: EulerDiscreteScheduler\noptions: {}\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def working_folder(tmp_path, monkeypatch):
    """A working folder with the user's own experiment, model and sampler, as the current directory."""
    write(tmp_path / "experiments" / "mine.yaml", MINE)
    write(tmp_path / "model" / "my_toy.yaml", MY_MODEL)
    write(tmp_path / "sampler" / "my_euler.yaml", MY_SAMPLER)
    write(tmp_path / "multirun" / "old.yaml", "x: 1\n")  # a folder of earlier runs adds no group
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_working_folders_configs_are_options_of_their_groups(working_folder):
    options = ConfigOptions()
    assert "mine" in options.of("experiment") and "demo" in options.of("experiment")
    assert "my_toy" in options.of("model") and "toy" in options.of("model")
    assert "my_euler" in options.of("sampler")
    overrides = ["experiment=mine", "model=my_toy", "sampler=my_euler"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose("config", overrides, return_hydra_config=True).hydra
        cfg = compose("config", overrides)
    assert "multirun" not in hydra_cfg.runtime.choices
    assert cfg.steps == 3 and dict(hydra_cfg.sweeper.params) == {"seed": "1,2"}
    spec = prepare_trial(cfg).spec
    assert (spec.model_source.kind, spec.sampler, spec.scheduler) == ("toy", "my_euler", "EulerDiscreteScheduler")


def test_schema_nodes_are_no_options():
    options = ConfigOptions()
    for group in ("model", "sampler", "tracking"):
        assert not [name for name in options.of(group) if "schema" in name], group


def test_preflight_reads_the_composed_search_path(working_folder):
    write(working_folder / "D" / "experiment" / "from_dir.yaml", "# @package _global_\nsteps: 4\n")
    write(working_folder / "E" / "experiment" / "from_searchpath.yaml", "# @package _global_\nsteps: 5\n")
    preflight(["-m", "experiment=mine", "model=my_toy", "sampler=my_euler,k_lms"])
    preflight(["--config-dir", "D", "experiment=from_dir"])
    preflight([f"hydra.searchpath=[file://{working_folder / 'E'}]", "experiment=from_searchpath"])
    with pytest.raises(ConfigError) as info:
        preflight(["experiment=from_dirr", "-cd", "D"])
    assert str(info.value).startswith("experiment: unknown option 'from_dirr'; did you mean 'from_dir'?; allowed: demo")
    assert "mine" in str(info.value)
    with pytest.raises(ConfigError, match="^experiment: unknown option 'from_dir'"):
        preflight(["experiment=from_dir"])  # without --config-dir it is not there


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-m", "experiment=demo", "--cfg", "job"], "--multirun and --cfg: give only one of --run, --multirun"),
        (["--info", "-m"], "--multirun and --info: give only one of"),
        (["--resolve", "strength=0.5"], "--resolve: only with --cfg or --help"),
        (["--config-dir", "no/such/folder"], "--config-dir: 'no/such/folder' is not a folder"),
    ],
)
def test_combinations_hydra_refuses_are_one_line(argv, expected):
    with pytest.raises(ConfigError) as info:
        preflight(argv)
    assert str(info.value).startswith(expected)


def test_hydras_own_flags_pass_the_preflight():
    for argv in (["--shell-completion", "install=bash"], ["-sc", "query=bash"], ["--cfg", "job", "-p", "model"],
                 ["--cfg", "all", "--resolve"], ["--info", "searchpath"], ["--help"], ["--hydra-help"],
                 ["--help", "--resolve", "experiment=demo"]):
        preflight(argv)


def _stdout(done) -> str:
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stdout


def test_the_command_composes_user_configs_and_passes_hydra_flags_through(sweeplab_cli, working_folder):
    write(working_folder / "D" / "experiment" / "from_dir.yaml", "# @package _global_\nsteps: 4\n")
    assert "steps: 3\n" in _stdout(sweeplab_cli("experiment=mine", "--cfg", "job"))
    assert _stdout(sweeplab_cli("--config-dir", "D", "experiment=from_dir", "--cfg", "job", "-p", "steps")) == "4\n"
    searchpath = f"hydra.searchpath=[file://{working_folder / 'D'}]"
    assert _stdout(sweeplab_cli(searchpath, "experiment=from_dir", "--cfg", "job", "-p", "steps")) == "4\n"
    assert "name: my_toy" in _stdout(sweeplab_cli("model=my_toy", "--cfg", "job", "-p", "model"))
    assert "sweeplab-folder://" in _stdout(sweeplab_cli("--info", "searchpath"))
    assert "Hydra (" in _stdout(sweeplab_cli("--hydra-help"))
    assert _stdout(sweeplab_cli("--cfg", "hydra", "--resolve", "-p", "hydra.job.name")) == "sweeplab\n"
    assert "complete -o nospace -o default -F hydra_bash_completion sweeplab" in _stdout(
        sweeplab_cli("--shell-completion", "install=bash"))
    completion = sweeplab_cli("-sc", "query=bash", env={"COMP_LINE": "sweeplab experiment=", "COMP_POINT": "20"})
    assert set(_stdout(completion).split()) >= {"experiment=mine", "experiment=demo"}

    refused = sweeplab_cli("-m", "experiment=demo", "--cfg", "job")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert errors == ["sweeplab: error: --multirun and --cfg: give only one of --run, --multirun, --cfg, --info "
                      "and --shell-completion"]


def test_help_describes_sweeplab_its_groups_keys_and_examples(sweeplab_cli, working_folder):
    text = _stdout(sweeplab_cli("--help"))
    assert text.startswith("sweeplab: declarative parameter sweeps for Stable Diffusion img2img")
    assert "powered by Hydra" not in text and "schema" not in text
    groups = dict(line.split(": ", 1) for line in text.split("== Config groups: group=option ==\n\n")[1]
                  .split("\n\n")[0].splitlines())
    assert set(groups) == {"experiment", "model", "sampler", "tracking"}
    assert groups["experiment"].split(", ") == ["demo", "img2img_tutorial", "invokeai_img2img", "mine", "tree_on_a_hill"]
    assert "my_toy" in groups["model"].split(", ") and "my_euler" in groups["sampler"].split(", ")
    for key_with_default in ("strength: 0.75\n", "steps: 50\n", "prompt: fire\n", "  allow_pickle: false\n"):
        assert key_with_default in text
    assert text.count("\n  sweeplab ") == 3  # the three example commands
    assert "steps: 3\n" in _stdout(sweeplab_cli("--help", "experiment=mine"))  # overrides show in the keys


def test_version_names_sweeplab_and_its_libraries(sweeplab_cli):
    from importlib.metadata import version

    import sweeplab

    line = _stdout(sweeplab_cli("--version"))
    assert line == (f"sweeplab {sweeplab.__version__} (torch {version('torch')}, diffusers {version('diffusers')}, "
                    f"MLflow {version('mlflow')}, Hydra {version('hydra-core')})\n")
    assert sweeplab.__version__ == version("sweeplab")
