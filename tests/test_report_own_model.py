"""Documentation figures from the user's own model: each model's complete figure set in its own folder, byte for
byte reproducible, selected by the overrides after `--` or by `--where`, and never mixed with another model's."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import assert_same_bytes, report_cli
from sweeplab.report.missing import launch_commands
from sweeplab.report.reports import refuse_mixed
from sweeplab.report.runs import PARAM_KEYS, ReportError
from sweeplab.toy import toy_model_dir

DOC = "invokeai_img2img"
SMALL = ("width=64", "height=64")  # the doc's (steps, strength) pairs stay, only the size shrinks
DOC_TRIALS = {(10, 0.4), (10, 0.7), (50, 0.4), (30, 0.7), (29, 0.7)}
FAMILIES = {"my-toy": "sd", "tiny-sd3": "sd3"}
SWEEP_TIMEOUT_S = 1800  # five trials up to 50 steps through two subprocesses, on a shared 2-core machine


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir) -> dict[str, list[str]]:
    """The sweep overrides of two models that are not the toy: the toy's folder copied under another name, and a
    tiny random-weight SD 3 pipeline (a flow-matching family, so flow_euler)."""
    root = tmp_path_factory.mktemp("own-models")
    copy = shutil.copytree(toy_model_dir(), root / "my-toy")
    tiny = shutil.copytree(tiny_model_dir("sd3"), root / "tiny-sd3")
    return {"my-toy": [f"model.path={copy}", *SMALL], "tiny-sd3": [f"model.path={tiny}", "sampler=flow_euler", *SMALL]}


@pytest.fixture(scope="module")
def stores(tmp_path_factory, models) -> list[Path]:
    """Two fresh folders, in each of which `doc-figures --run-missing -- OVERRIDES` made both models' figure sets
    (MLflow store and reports/ in the folder, as `make figures MODEL_ARGS=...` does)."""
    folders = [tmp_path_factory.mktemp(f"store{number}") for number in (1, 2)]
    for folder in folders:
        for overrides in models.values():
            done = report_cli("doc-figures", "--experiment", DOC, "--run-missing", "--", *overrides, cwd=folder,
                              timeout=SWEEP_TIMEOUT_S)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "5 trials, 0 reused, 5 to run" in done.stderr
    return folders


def figure_set(store: Path, model: str) -> Path:
    return store / "reports" / f"{DOC}-{model}"


@pytest.mark.parametrize("model", FAMILIES)
def test_each_model_writes_its_own_complete_figure_set_naming_it(stores, model):
    folder = figure_set(stores[0], model)
    assert sorted(path.name for path in (stores[0] / "reports").iterdir()) == [f"{DOC}-{name}" for name in FAMILIES]
    listed = (folder / "doc-figures" / "MANIFEST").read_text().splitlines()[1:]
    images = {f"doc-figures/strength{strength}_steps{steps}-{kind}.png" for steps, strength in DOC_TRIALS
              for kind in ("start", "latent_strip", "output", "output-128px")}
    assert set(listed) == {"doc-figures.md", "doc-figures.html", "doc-figures.csv",
                           "doc-figures/grid-steps-strength.png", *images}
    assert all((folder / name).is_file() for name in listed)
    text = (folder / "doc-figures.md").read_text()
    family = FAMILIES[model]
    title = f"# img2img, step by step: the InvokeAI doc's figures ({DOC}; model {model}, family {family})"
    assert text.startswith(title)
    assert f"model: {model}; model_family: {family}; sampler: " in text and "width: 64; height: 64" in text
    assert "toy" not in text.replace("my-toy", "")
    table = pd.read_csv(folder / "doc-figures.csv")
    assert set(zip(table["steps"], table["strength"])) == DOC_TRIALS and (table["status"] == "FINISHED").all()
    # diffusers' SD img2img denoises int(steps x strength) steps, its SD 3 one steps - int(steps - steps x strength)
    counted = [int(steps * strength) if family == "sd" else steps - int(steps - steps * strength)
               for steps, strength in zip(table["steps"], table["strength"])]
    assert table["steps_taken"].tolist() == counted
    for taken, formula in re.findall(r"diffusers took (\d+), which is int\(\d+ x [\d.]+\) = (\d+)", text):
        assert taken == formula
    if family == "sd3":  # 29 x 0.7 = 20.3: SD 3 takes 21, and the text says why it is not 20
        assert ("29 steps at strength 0.7: the doc says SD took 19 steps; diffusers took 21, not int(29 x 0.7) = 20: "
                "this model's img2img pipeline rounds steps x strength its own way.") in text


@pytest.mark.parametrize("model", FAMILIES)
def test_figure_sets_from_fresh_stores_are_byte_identical(stores, model):
    assert_same_bytes(figure_set(stores[0], model), figure_set(stores[1], model))


def test_two_models_in_one_experiment_are_refused_unless_selected_or_grouped(stores, models, tmp_path):
    store = stores[0]
    for args, remedy in ((["doc-figures"], ""), (["grid", "--x", "strength", "--y", "steps"], " or make it an axis")):
        refused = report_cli(*args, "--experiment", DOC, "--out", str(tmp_path / "refused"), cwd=store)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith("sweeplab-report: error: model: my-toy, tiny-sd3; the selected runs differ "
                                         f"in model, which this report does not show: add --where model=VALUE{remedy}")
    assert not (tmp_path / "refused").exists()

    by_param = report_cli("doc-figures", "--experiment", DOC, "--where", "model=tiny-sd3", "--out",
                          str(tmp_path / "where"), cwd=store)
    assert by_param.returncode == 0, by_param.stderr
    assert_same_bytes(figure_set(store, "tiny-sd3"), tmp_path / "where")
    by_overrides = report_cli("doc-figures", "--experiment", DOC, "--out", str(tmp_path / "overrides"), "--",
                              *models["my-toy"], cwd=store)
    assert by_overrides.returncode == 0, by_overrides.stderr
    assert_same_bytes(figure_set(store, "my-toy"), tmp_path / "overrides")

    grouped = report_cli("steps-vs-strength", "--experiment", DOC, "--out", str(tmp_path / "grouped"), cwd=store)
    assert grouped.returncode == 0, grouped.stderr
    text = (tmp_path / "grouped" / "steps-vs-strength.md").read_text()
    assert "## model my-toy, model_family sd" in text and "## model tiny-sd3, model_family sd3" in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--where", "colour=red"], "--where colour=red: no run of experiment 'invokeai_img2img' logged colour; "
                                    "allowed: cfg_scale, "),
        (["--where", "model=nope"], "--where model=nope: no run of experiment 'invokeai_img2img' has model=nope; "
                                    "its values: my-toy, tiny-sd3"),
        (["--where", "model"], "--where: 'model' is not KEY=VALUE"),
        (["--", "width=64"], "no runs of experiment 'invokeai_img2img' with width=64; add --run-missing to run them"),
    ],
)
def test_a_selection_that_cannot_work_is_one_line(stores, args, expected):
    done = report_cli("doc-figures", "--experiment", DOC, *args, cwd=stores[0])
    assert done.returncode == 2 and done.stderr.startswith("sweeplab-report: error: ")
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_overrides_after_the_separator_need_an_experiment(tmp_path):
    done = report_cli("strips", "--sweep", "0123456789abcdef", "--", "model.path=x", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("sweeplab-report: error: --run-missing and sweep overrides after -- need "
                                   "--experiment NAME (an experiments/NAME.yaml)")


def test_the_sweeps_run_missing_starts_carry_the_overrides():
    trials = [["experiment=e", "model.path=/m", "steps=10", "strength=0.4"],
              ["experiment=e", "model.path=/m", "steps=50", "strength=0.4"]]
    overrides = ["model.path=/m", "hydra.launcher.batch_size=2"]
    whole = launch_commands(trials, 2, overrides)
    assert [command[1:] for command in whole] == [["-m", "experiment=e", *overrides]]
    product = launch_commands(trials, 5, overrides)
    assert [command[1:] for command in product] == [["-m", "experiment=e", "model.path=/m", "steps=10,50",
                                                     "strength=0.4", "hydra.launcher.batch_size=2"]]


def test_a_key_derived_from_the_shown_ones_may_vary_but_a_model_never():
    compensated = pd.DataFrame({**{key: [None, None] for key in PARAM_KEYS}, "model": ["toy", "toy"],
                                "model_family": ["sd", "sd"], "strength": [0.4, 0.7], "steps": [50, 29],
                                "seed": [1, 1], "steps_taken_target": [20, 20]})
    refuse_mixed(compensated, ["strength", "seed"])  # steps follows from strength and steps_taken_target
    two_targets = compensated.assign(strength=[0.4, 0.4], steps=[50, 25], steps_taken_target=[20, 10])
    refuse_mixed(two_targets, ["steps_taken_target"])
    with pytest.raises(ReportError, match="^steps: 25, 50; "):
        refuse_mixed(two_targets, ["seed"])
    two_models = compensated.assign(model=["toy", "my-sd"])  # one model per strength: fixed, yet never left unshown
    with pytest.raises(ReportError, match="^model: my-sd, toy; .* add --where model=VALUE$"):
        refuse_mixed(two_models, ["strength", "seed"])
    refuse_mixed(two_models, ["model", "strength"])
