"""sweeplab-report on real sweeps of the toy model: loader, paging, grid, strips, errors, torch-free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Param
from PIL import Image

from conftest import report_cli
from sweeplab.report.grid import FAILED_FILL, FAILED_INK, GridStyle
from sweeplab.report.page import Report
from sweeplab.report.reports import add_grids
from sweeplab.report.runs import PARAM_KEYS, Artifacts, load_runs, one_per_trial

# 3 seeds x 2 strengths, strength 1.5 invalid: a 2x3 grid with a failed row, in a few seconds
GRID_SWEEP = ["-m", "steps=2", "width=64", "height=64", "prompt=fire", "strength=0.5,1.5", "seed=1,2,3",
              "tracking.log_step_images=false", "tracking.experiment=small"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """A real sweep: 3 finished trials and 3 failed (invalid strength) ones."""
    folder = tmp_path_factory.mktemp("small-store")
    done = subprocess.run([str(Path(sys.executable).with_name("sweeplab")), *GRID_SWEEP], cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # the invalid trials fail, the sweep goes on
    assert "6 trials: 3 finished, 3 failed" in done.stderr
    return folder


def client(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def test_loader_gives_one_row_per_trial_with_params_metrics_tags_and_artifacts(small_store):
    frame = one_per_trial(load_runs(client(small_store), "small"))
    assert len(frame) == 6
    assert sorted(frame["status"]) == ["FAILED"] * 3 + ["FINISHED"] * 3
    assert frame["strength"].tolist() == [0.5] * 3 + [1.5] * 3  # failed trials placed by their overrides
    assert frame["seed"].tolist() == [1, 2, 3] * 2
    assert (frame["sampler"] == "k_lms").all()  # a failed trial shares what its sweep did not vary
    done = frame[frame["status"] == "FINISHED"]
    assert (done["steps_taken"] == 1).all() and (done["denoiser_evals"] == 1).all()  # int(2 x 0.5) = 1
    assert done["config_hash"].str.len().eq(16).all()
    assert done["artifact_uri"].str.endswith("/artifacts").all()
    failed = frame[frame["status"] == "FAILED"]
    assert failed["error"].str.startswith("strength: 1.5 is out of range").all()
    latest = load_runs(client(small_store), "small", latest_sweep=True)
    assert set(latest["run_id"]) == set(frame["run_id"])  # the only sweep is the latest
    by_parent = load_runs(client(small_store), sweep=latest["parent_run_id"].iloc[0])
    assert set(by_parent["run_id"]) == set(frame["run_id"])


def _make_runs(store: MlflowClient, experiment: str, count: int, with_params: bool) -> None:
    experiment_id = store.create_experiment(experiment)
    for index in range(count):
        run = store.create_run(experiment_id, tags={"sweeplab.config_hash": f"hash{index:05d}"})
        if with_params:
            store.log_batch(run.info.run_id, params=[Param("steps", str(index)), Param("strength", "0.5")])


def test_loader_pages_through_more_runs_than_one_page(tmp_path):
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _make_runs(store, "paged", 25, with_params=True)
    frame = load_runs(store, "paged", page_size=10)  # three pages: 10, 10, 5
    assert len(frame) == 25 and frame["run_id"].is_unique
    assert sorted(frame["steps"]) == list(range(25))


def test_loader_reads_past_mlflows_1000_run_page(tmp_path):
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    started = time.perf_counter()
    _make_runs(store, "big", 1005, with_params=False)
    created = time.perf_counter() - started
    started = time.perf_counter()
    frame = load_runs(store, "big")
    print(f"1005 runs: created in {created:.1f} s, loaded in {time.perf_counter() - started:.1f} s")
    assert len(frame) == 1005 and frame["config_hash"].is_unique


def test_grid_2x3_has_layout_size_labels_and_a_marked_failed_row(small_store):
    store = client(small_store)
    frame = one_per_trial(load_runs(store, "small"))
    report = Report("grid", "test")
    artifacts = Artifacts(store)
    try:
        (layout,) = add_grids(report, frame, artifacts, ["seed", "strength"], style=GridStyle(cell=96, margin=20, gap=6))
        outputs = {row.seed: artifacts.image(row.run_id, "output.png") for row in frame.itertuples()
                   if row.status == "FINISHED"}
    finally:
        artifacts.close()
    (data,) = report.images.values()
    import io

    picture = Image.open(io.BytesIO(data)).convert("RGB")
    assert (layout.columns, layout.rows) == (3, 2)
    assert picture.size == layout.size
    width, height = picture.size
    assert width == 2 * 20 + layout.row_label_width + 3 * 96 + 2 * 6
    assert height == 2 * 20 + layout.legend_height + layout.column_label_height + 2 * 96 + 6
    pixels = np.asarray(picture)

    def region(box):
        left, top, right, bottom = box
        return pixels[top:bottom, left:right]

    labels = [region(layout.column_label_box(c)) for c in range(3)] + [region(layout.row_label_box(r)) for r in range(2)]
    for label in labels + [region(layout.legend_box())]:
        assert (label < 100).any(), "a label region is blank"
    assert len({label.tobytes() for label in labels}) == 5  # every label says something different
    for column, seed in enumerate([1, 2, 3]):  # row 0: strength 0.5, the outputs themselves
        expected = np.asarray(outputs[seed].resize((96, 96), Image.Resampling.LANCZOS))
        assert np.abs(region(layout.cell_box(column, 0)).astype(int) - expected).max() <= 1
        failed = region(layout.cell_box(column, 1))  # row 1: strength 1.5, failed
        assert tuple(failed[5, 48]) == FAILED_FILL  # grey fill
        assert tuple(failed[48 - 20, 48 - 20]) == FAILED_INK  # on the X
        assert (failed < 60).any()  # the word "failed"


def test_grid_cli_writes_markdown_csv_html_and_one_grid_per_z(small_store, tmp_path):
    done = report_cli("grid", "--experiment", "small", "--x", "strength", "--y", "model", "--z", "seed",
                      "--out", str(tmp_path / "out"), cwd=small_store)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "grid").iterdir()) == ["MANIFEST", *(f"grid-strength-model-seed{n}.png"
                                                                               for n in (1, 2, 3))]
    markdown = (out / "grid.md").read_text()
    assert markdown.count("<img ") == 3 and "## seed: 2" in markdown
    csv = pd.read_csv(out / "grid.csv")
    assert csv["status"].value_counts().to_dict() == {"FINISHED": 3, "FAILED": 3}
    assert "<img src=\"grid/grid-strength-model-seed1.png\"" in (out / "grid.html").read_text()


def test_strips_report_has_a_column_per_trial_with_start_strip_and_output(small_store, tmp_path):
    done = report_cli("strips", "--latest-sweep", "--experiment", "small", "--out", str(tmp_path), cwd=small_store)
    assert done.returncode == 0, done.stderr
    rows = [line for line in (tmp_path / "strips.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows[0].split(" | ")) == 1 + 6  # a title column and a column per trial
    start_row = next(row for row in rows if row.startswith("| initial image SD sees"))
    assert start_row.count("<img ") == 3 and start_row.count("failed: strength: 1.5 is out of range") == 3
    images = sorted(p.name for p in (tmp_path / "strips").glob("*.png"))
    assert images == sorted(f"strength0.5_seed{s}-{kind}.png" for s in (1, 2, 3)
                            for kind in ("start", "latent_strip", "output"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["grid", "--experiment", "small", "--x", "seed", "--y", "colour"],
         "unknown axis key 'colour'; allowed: model, model_family, sampler, prompt"),
        (["strips", "--experiment", "nope"], "experiment 'nope' not found in sqlite:///"),
        (["strips", "--sweep", "0123456789abcdef"], "sweep run '0123456789abcdef' not found"),
        (["grid", "--experiment", "small", "--x", "seed", "--y", "steps"],
         "strength: 0.5, 1.5; the selected runs differ in strength, which this report does not show"),
        (["doc-figures", "--experiment", "small"], "experiment 'small' lacks the doc's trials steps=10 strength=0.7"),
    ],
)
def test_bad_input_is_one_line_without_traceback(small_store, args, expected):
    done = report_cli(*args, cwd=small_store)
    assert done.returncode == 2
    assert done.stderr.startswith("sweeplab-report: error: ") and expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_no_store_is_one_line(tmp_path):
    done = report_cli("steps-vs-strength", "--experiment", "demo", cwd=tmp_path)
    assert done.returncode == 2 and "no MLflow store at" in done.stderr and "Traceback" not in done.stderr


def test_report_layer_never_imports_torch(small_store, tmp_path):
    script = (
        "import sys\n"
        "from sweeplab.report.cli import main, run, build_parser\n"
        "import sweeplab.report.docfigures, sweeplab.report.gridpage, sweeplab.report.missing\n"
        f"run(build_parser().parse_args(['strips', '--experiment', 'small', '--out', {str(tmp_path)!r}]))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m in "
        "('sweeplab.runner', 'sweeplab.models', 'sweeplab.render', 'sweeplab.trial'))\n"
        "print('imported:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=small_store, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert (tmp_path / "strips.md").is_file()  # it really built a report


def test_one_per_trial_prefers_a_finished_rerun():
    frame = pd.DataFrame({
        "run_id": ["a", "b", "c"], "status": ["FINISHED", "FAILED", "FINISHED"], "start_time": [1, 3, 2],
        "config_hash": ["h1", "h1", "h2"], "overrides": ["", "", ""],
        **{key: [None] * 3 for key in PARAM_KEYS if key not in ("strength", "steps")},
        "strength": [0.4, 0.4, 0.7], "steps": [10, 10, 10],
    })
    assert one_per_trial(frame)["run_id"].tolist() == ["a", "c"]


def test_steps_vs_strength_names_samplers_whose_unet_evaluations_differ(tmp_path):
    sweep = ["-m", "steps=4", "strength=0.5", "width=64", "height=64", "sampler=k_lms,k_heun,plms",
             "tracking.log_step_images=false", "tracking.experiment=samplers"]
    done = subprocess.run([str(Path(sys.executable).with_name("sweeplab")), *sweep], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    done = report_cli("steps-vs-strength", "--experiment", "samplers", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "steps-vs-strength.csv").set_index("sampler")
    assert (table["steps_taken"] == 2).all()  # int(4 x 0.5) for every sampler
    assert table.loc["k_lms", "denoiser_evals"] == 2
    assert table.loc["k_heun", "denoiser_evals"] == 3 and table.loc["plms", "denoiser_evals"] == 3
    text = (tmp_path / "out" / "steps-vs-strength.md").read_text()
    assert "k_lms: one denoiser evaluation per step taken, in 1 trial." in text
    for sampler in ("k_heun", "plms"):
        assert (f"{sampler}: denoiser evaluations differ from steps taken (4 steps at strength 0.5: 2 steps taken, "
                f"3 denoiser evaluations)") in text
    assert text.count("## sampler ") == 3  # one table per sampler


def test_experiment_files_expand_to_the_doc_trials():
    from sweeplab.plan import plan

    trials = plan(["experiment=tree_on_a_hill"])
    prompts = sorted(override for trial in trials for override in trial["overrides"] if override.startswith("prompt="))
    assert prompts == ['prompt="photograph of a tree on a hill with a river"',
                       'prompt="tree on a hill with a river, nature photograph, national geographic"']
    assert len({trial["config_hash"] for trial in trials}) == 2
    cells = {tuple(sorted(o for o in trial["overrides"] if o.startswith(("steps=", "strength="))))
             for trial in plan(["experiment=invokeai_img2img"])}
    assert cells == {(f"steps={steps}", f"strength={strength}")  # zipped pairs, not their 8 combinations
                     for steps, strength in ((10, 0.4), (10, 0.7), (50, 0.4), (30, 0.7), (29, 0.7))}


def test_chains_report_follows_each_output_into_the_next_link(tmp_path):
    sweeplab = str(Path(sys.executable).with_name("sweeplab"))
    done = subprocess.run([sweeplab, "-m", "iterations=3", "seed=1,2", "steps=4", "strength=0.5", "width=64",
                           "height=64", "tracking.log_step_images=false", "tracking.experiment=chain"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    made = report_cli("chains", "--experiment", "chain", "--out", "out", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    markdown = (tmp_path / "out" / "chains.md").read_text()
    assert "| chain | init image | iteration 0 | iteration 1 | iteration 2 |" in markdown
    assert markdown.count("seed 1") >= 1 and markdown.count("seed 2") >= 1
    frame = one_per_trial(load_runs(client(tmp_path), "chain"))
    first = frame[(frame["seed"] == 1) & (frame["iteration"] == 0)].iloc[0]
    second = frame[frame["sweeplab.previous_run_id"] == first["run_id"]].iloc[0]
    shown = sorted((tmp_path / "out" / "chains").glob("seed1_iteration1-output*.png"))
    assert len(shown) == 1
    artifacts = Artifacts(client(tmp_path))
    try:
        assert np.array_equal(np.asarray(Image.open(shown[0]).convert("RGB")),
                              np.asarray(artifacts.image(second["run_id"], "output.png")))
    finally:
        artifacts.close()
    missing = report_cli("chains", "--experiment", "small-none", "--out", "x", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("sweeplab-report: error:")
