"""The interactive grid page (in chromium) and grid PNGs past their size limit, on one small real sweep."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import SWEEPLAB, assert_same_bytes, browser_page, report_cli
from sweeplab.report.grid import FAILED, FAILED_FILL, FAILED_INK, GridStyle, draw_grid, fit_grid
from sweeplab.report.gridpage import mlflow_ui
from sweeplab.report.page import Report, to_markdown
from sweeplab.report.reports import add_grids
from sweeplab.report.runs import Artifacts, ReportError, load_runs, one_per_trial

# 2 steps x 2 strengths x 2 seeds; strength 1.5 is invalid: 4 finished trials, 4 failed, three swept keys
SWEEP = ["-m", "steps=2,4", "strength=0.5,1.5", "seed=1,2", "width=64", "height=64", "prompt=fire",
         "tracking.log_step_images=false", "tracking.experiment=page"]
THUMB = 48  # below the toy's 64 px outputs, so the thumbnails really are scaled down


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("page-store")
    done = subprocess.run([str(SWEEPLAB), *SWEEP], cwd=folder, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr  # the invalid trials fail, the sweep goes on
    assert "8 trials: 4 finished, 4 failed" in done.stderr
    return folder


def trials(folder: Path) -> pd.DataFrame:
    return one_per_trial(load_runs(MlflowClient(f"sqlite:///{folder / 'mlflow.db'}"), "page"))


def make_page(store: Path, out: Path, *options: str) -> Path:
    made = report_cli("grid-page", "--experiment", "page", "--x", "seed", "--y", "strength", "--thumb", str(THUMB),
                      "--out", str(out), *options, cwd=store)
    assert made.returncode == 0, made.stderr
    return out


@pytest.fixture(scope="module")
def page(store) -> Path:
    """The grid page, seed along X and strength along Y at first."""
    return make_page(store, store / "page")


def test_grid_page_twice_gives_identical_bytes_small_thumbnails_and_no_run_ids(store, page):
    assert_same_bytes(page, make_page(store, store / "again"))
    frame = trials(store)
    for name in ("grid-page.html", "grid-page.md", "grid-page.csv"):
        text = (page / name).read_text()
        assert str(store) not in text and "mlartifacts" not in text and "/runs/" not in text
        assert not any(run_id in text for run_id in frame["run_id"])
    done = frame[frame["status"] == "FINISHED"]
    images = sorted(path.name for path in (page / "grid-page").iterdir() if path.name != "MANIFEST")
    assert images == sorted(f"strength0.5_steps{row.steps}_seed{row.seed}-{kind}.png" for row in done.itertuples()
                            for kind in ("output", "start", "latent_strip"))
    for row in done.itertuples():
        stem = page / "grid-page" / f"strength0.5_steps{row.steps}_seed{row.seed}"
        assert Image.open(f"{stem}-output.png").size == (THUMB, THUMB)  # the toy's 64 px, written smaller
        assert Image.open(f"{stem}-start.png").width <= THUMB
        assert Image.open(f"{stem}-latent_strip.png").size == (THUMB // 2 * row.steps_taken, THUMB // 2)
    csv = pd.read_csv(page / "grid-page.csv")
    assert csv["status"].value_counts().to_dict() == {"FINISHED": 4, "FAILED": 4}
    assert "8 trials: 4 finished, 4 failed." in (page / "grid-page.md").read_text()


SOURCES = "images => images.map(image => image.getAttribute('src'))"
LOADED = "() => Array.from(document.images).every(image => image.complete && image.naturalWidth > 0)"


def test_grid_page_switches_axes_steps_keys_and_toggles_cells_in_chromium(page, chromium, tmp_path):
    with browser_page(chromium, tmp_path / "profile", page / "grid-page.html") as browser:
        def headers():
            return browser.locator("#grid thead th").all_inner_texts()

        def sources():
            return [src.removeprefix("grid-page/") for src in browser.locator("#grid img").evaluate_all(SOURCES)]

        assert headers() == ["strength \\ seed", "seed: 1", "seed: 2"]
        assert browser.locator("#grid tbody th").all_inner_texts() == ["strength: 0.5", "strength: 1.5"]
        assert sources() == ["strength0.5_steps2_seed1-output.png", "strength0.5_steps2_seed2-output.png"]
        assert browser.locator(".numbers").all_inner_texts() == ["1 step taken, 1 denoiser evaluation"] * 2
        failed = browser.locator("#grid .failed")
        assert failed.count() == 2 and "strength: 1.5 is out of range" in failed.first.inner_text()
        assert "linear-gradient" in failed.first.evaluate("cell => getComputedStyle(cell).backgroundImage")  # the X
        assert browser.locator("#grid img").evaluate_all("images => images.every(i => i.loading === 'lazy')")
        assert browser.locator("a.run").count() == 0

        browser.select_option("#axis-x", "steps")  # seed leaves X and becomes a stepper
        assert headers() == ["strength \\ steps", "steps: 2", "steps: 4"]
        assert sources() == ["strength0.5_steps2_seed1-output.png", "strength0.5_steps4_seed1-output.png"]
        assert browser.locator(".numbers").all_inner_texts() == ["1 step taken, 1 denoiser evaluation",
                                                                  "2 steps taken, 2 denoiser evaluations"]
        browser.click('button[data-step="seed"][data-delta="1"]')
        assert sources() == ["strength0.5_steps2_seed2-output.png", "strength0.5_steps4_seed2-output.png"]
        assert browser.locator('button[data-step="seed"][data-delta="1"]').is_disabled()  # seed 2 is the last
        browser.wait_for_function(LOADED)

        first = browser.locator("#grid .cell").first
        first.locator('button[data-show="start"]').click()
        assert sources() == ["strength0.5_steps2_seed2-start.png", "strength0.5_steps4_seed2-output.png"]
        assert first.locator('button[data-show="start"]').get_attribute("aria-pressed") == "true"
        browser.locator("#grid .cell").first.locator('button[data-show="latent_strip"]').click()
        assert sources()[0] == "strength0.5_steps2_seed2-latent_strip.png"
        browser.select_option("#show", "latent_strip")  # every cell
        assert sources() == ["strength0.5_steps2_seed2-latent_strip.png", "strength0.5_steps4_seed2-latent_strip.png"]
        browser.wait_for_function(LOADED)

        browser.select_option("#axis-y", "steps")  # Y takes X's key: the axes swap
        assert headers() == ["steps \\ strength", "strength: 0.5", "strength: 1.5"]
        assert browser.locator("#grid tbody th").all_inner_texts() == ["steps: 2", "steps: 4"]
        assert browser.locator("#grid .failed").count() == 2  # the strength 1.5 column


def test_grid_page_links_cells_to_their_mlflow_runs_only_when_asked(store, chromium, tmp_path):
    linked = make_page(store, tmp_path / "linked", "--run-links", "http://127.0.0.1:5000/")
    frame = trials(store)
    links = {(row.seed, row.strength, row.steps): f"http://127.0.0.1:5000/#/experiments/{row.experiment_id}/runs/"
             f"{row.run_id}" for row in frame.itertuples()}
    html = (linked / "grid-page.html").read_text()
    assert all(link in html for link in links.values())
    with browser_page(chromium, tmp_path / "profile", linked / "grid-page.html") as browser:
        shown = browser.locator("a.run").evaluate_all("anchors => anchors.map(a => a.href)")
    assert shown == [links[(1, 0.5, 2)], links[(2, 0.5, 2)], links[(1, 1.5, 2)], links[(2, 1.5, 2)]]  # failed too

    refused = report_cli("grid-page", "--experiment", "page", "--run-links", "--out", str(tmp_path), cwd=store)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("sweeplab-report: error: --run-links: the tracking URI sqlite:///")


def test_mlflow_ui_address_is_the_tracking_server_without_its_password():
    assert mlflow_ui("", "http://user:secret@mlflow.lab:5055/") == "http://mlflow.lab:5055"
    assert mlflow_ui("https://lab.example/mlflow/", "sqlite:///mlflow.db") == "https://lab.example/mlflow"
    with pytest.raises(ReportError, match="'ftp://x' is not an MLflow UI address"):
        mlflow_ui("ftp://x", "http://127.0.0.1:5055")


@pytest.mark.parametrize(("args", "expected"), [
    (["--x", "colour"], "--x: 'colour' is not a swept key of these runs; allowed: strength, steps, seed"),
    (["--x", "seed", "--y", "seed"], "--x and --y must differ; got seed for both"),
])
def test_grid_page_bad_axis_is_one_line(store, tmp_path, args, expected):
    done = report_cli("grid-page", "--experiment", "page", *args, "--out", str(tmp_path), cwd=store)
    assert done.returncode == 2 and done.stderr == f"sweeplab-report: error: {expected}\n"


def assert_row(picture: Image.Image, layout, row: int, cells: list) -> None:
    """Each cell of a drawn row holds its output fitted to the cell, or the crossed-out failed mark."""
    pixels = np.asarray(picture)
    for column, cell in enumerate(cells):
        left, top, right, bottom = layout.cell_box(column, row)
        region = pixels[top:bottom, left:right].astype(int)
        if cell is FAILED:
            assert tuple(region[3, (right - left) // 2]) == FAILED_FILL  # the grey fill along the top
            middle = (bottom - top) // 4
            assert tuple(region[middle, round(middle * (right - left) / (bottom - top))]) == FAILED_INK  # on the X
        else:
            expected = np.asarray(cell.resize((right - left, bottom - top), Image.Resampling.LANCZOS))
            assert np.abs(region - expected).max() <= 1


def test_grid_past_max_side_scales_its_cells_down_and_says_so(store):
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    frame = trials(store)
    report = Report("grid", "test")
    artifacts = Artifacts(client)
    try:
        layouts = add_grids(report, frame, artifacts, ["seed", "strength", "steps"],
                            style=GridStyle(cell=256, max_side=500))
        outputs = {(row.seed, row.steps): artifacts.image(row.run_id, "output.png") for row in frame.itertuples()
                   if row.status == "FINISHED"}
    finally:
        artifacts.close()
    assert len(layouts) == 2 and len(report.images) == 2  # one grid per steps value, each one file
    markdown = to_markdown(report)
    for (name, data), layout, steps in zip(sorted(report.images.items()), layouts, (2, 4)):
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        assert picture.size == layout.size and max(picture.size) <= 500
        assert 128 <= layout.cell_width < 256 and (layout.columns, layout.rows) == (2, 2)
        assert f"Cells scaled down from 256 to {layout.cell_width} px wide to keep the grid within 500 px" in markdown
        assert_row(picture, layout, 0, [outputs[(1, steps)], outputs[(2, steps)]])  # strength 0.5
        assert_row(picture, layout, 1, [FAILED, FAILED])  # strength 1.5
    assert markdown.count("(--max-side).") == 2


def test_grid_past_max_side_splits_into_captioned_parts_and_keeps_failed_cells_crossed_out(store, tmp_path):
    done = report_cli("grid", "--experiment", "page", "--x", "seed", "--y", "strength", "--z", "steps", "--cell",
                      "128", "--max-side", "320", "--out", str(tmp_path), cwd=store)
    assert done.returncode == 0, done.stderr
    files = sorted(path.name for path in (tmp_path / "grid").iterdir() if path.name != "MANIFEST")
    assert files == [f"grid-seed-strength-steps{z}-part{part}.png" for z in (1, 2) for part in (1, 2, 3, 4)]
    markdown = (tmp_path / "grid.md").read_text()
    assert markdown.count("so it is split into 4 parts of at most 1 x 1 cells (columns x rows).") == 2
    assert "part 3 of 4: columns 1-1 of 2, rows 2-2 of 2" in markdown
    for name in files:
        pixels = np.asarray(Image.open(tmp_path / "grid" / name).convert("RGB"))
        assert max(pixels.shape[:2]) <= 320
        crossed = (pixels == FAILED_FILL).all(axis=2).sum() > 1000 and (pixels == FAILED_INK).all(axis=2).any()
        assert crossed == name.endswith(("part3.png", "part4.png"))  # row 2 is strength 1.5, failed

    refused = report_cli("grid", "--experiment", "page", "--x", "seed", "--y", "strength", "--z", "steps",
                         "--cell", "96", "--max-side", "150", "--out", str(tmp_path), cwd=store)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr  # after the sample image's download bar:
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "sweeplab-report: error: --max-side 150 px cannot hold one 96 px cell with its labels (")


def test_fit_grid_parts_cover_every_cell_once_within_the_limit():
    columns, rows = [f"strength: 0.{n}" for n in range(20)], [f"seed: {n}" for n in range(12)]
    cell = Image.new("RGB", (64, 64), (200, 30, 30))
    cells = [[FAILED if (row + column) % 7 == 0 else cell for column in range(20)] for row in range(12)]
    legend = "x: strength, y: seed"
    assert fit_grid(legend, columns, rows, 128, GridStyle()).parts[0].caption == ""  # 8192 px hold it whole
    fit = fit_grid(legend, columns, rows, 128, GridStyle(max_side=900))
    assert fit.cell_width == 128 and len(fit.parts) > 1
    covered = [(row, column) for part in fit.parts for row in part.rows for column in part.columns]
    assert sorted(covered) == [(row, column) for row in range(12) for column in range(20)]
    for part in fit.parts:
        picture, _ = draw_grid(fit.legend(legend, part), *part.labels(columns, rows), part.cells(cells),
                               fit.cell_width, fit.cell_height, GridStyle(max_side=900))
        assert max(picture.size) <= 900 and part.caption.startswith(f"part {fit.parts.index(part) + 1} of ")


def test_page_data_cannot_close_its_script_element():
    from sweeplab.report.gridpage import _markup

    data = {"trials": [{"label": "prompt </script><!-- <b>fire</b>"}]}
    markup = _markup(data, THUMB)
    payload = markup.split('<script type="application/json" id="grid-data">')[1].split("</script>")[0]
    assert "<" not in payload and json.loads(payload) == data
