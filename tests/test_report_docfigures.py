"""The InvokeAI doc's figure set, regenerated from the versioned experiment: numbers, bytes, browser."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import assert_same_bytes, browser_page, regenerate_figures

EXPERIMENT = "invokeai_img2img"


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeplab.report", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1800)


def regenerate(cwd: Path, out: Path) -> subprocess.CompletedProcess:
    return regenerate_figures("doc-figures", EXPERIMENT, cwd, out)


@pytest.fixture(scope="module")
def doc_store(tmp_path_factory) -> tuple[Path, Path]:
    """A fresh store in which `doc-figures --run-missing` ran the whole experiment, and its output."""
    cwd = tmp_path_factory.mktemp("doc-store")
    done = regenerate(cwd, cwd / "first")
    assert "5 trials, 0 reused, 5 to run" in done.stderr
    return cwd, cwd / "first"


def test_steps_vs_strength_table_holds_the_measured_numbers(doc_store, tmp_path):
    cwd, _ = doc_store
    done = report_cli("steps-vs-strength", "--experiment", EXPERIMENT, "--out", str(tmp_path), cwd=cwd)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "steps-vs-strength.csv")
    measured = {(row.strength, row.steps): (row.steps_taken, row.denoiser_evals) for row in table.itertuples()}
    assert measured[(0.4, 10)] == (4, 4) and measured[(0.7, 10)] == (7, 7)
    assert measured[(0.7, 29)] == (20, 20) and measured[(0.7, 30)] == (21, 21) and measured[(0.4, 50)] == (20, 20)
    assert len(measured) == 5  # the doc's pairs, zipped: no 29 or 30 at 0.4, no 50 at 0.7
    rows = {line.split(" | ")[0]: line.split(" | ") for line in (tmp_path / "steps-vs-strength.md").read_text()
            .splitlines() if line.startswith("| strength ")}
    header = next(line for line in (tmp_path / "steps-vs-strength.md").read_text().splitlines()
                  if line.startswith("| strength \\"))
    column = header.split(" | ").index("10 steps")
    assert rows["| strength 0.4"][column].startswith("4 steps taken<br>4 denoiser evaluations<br><img ")
    assert rows["| strength 0.7"][column].startswith("7 steps taken<br>7 denoiser evaluations<br><img ")
    assert "k_lms: one denoiser evaluation per step taken, in 5 trials." in (tmp_path / "steps-vs-strength.md").read_text()


def test_doc_figures_explain_where_diffusers_differs_from_the_doc(doc_store):
    _, out = doc_store
    figures = pd.read_csv(out / "doc-figures.csv")
    row = figures[(figures["steps"] == 29) & (figures["strength"] == 0.7)].iloc[0]
    assert (row.doc_steps, row.steps_taken, row.int_steps_x_strength) == (19, 20, 20)
    text = (out / "doc-figures.md").read_text()
    assert ("29 steps at strength 0.7: the doc says SD took 19 steps; diffusers took 20, which is int(29 x 0.7) = 20."
            in text)
    assert "10 steps at strength 0.7: the doc says SD took 7 steps; diffusers took 7 as well." in text
    assert "## A concrete example: 10 steps at strength 0.7 and 0.4" in text
    concrete = text.split("## A concrete example")[1].split("## Compensating")[0]
    assert "| initial image SD sees | <img src=\"doc-figures/strength0.7_steps10-start.png\"" in concrete
    compensated = text.split("## Compensating")[1].split("## Steps actually taken")[0]
    for steps, strength in ((50, 0.4), (30, 0.7), (29, 0.7)):
        for image in ("start", "latent_strip", "output"):
            assert f"doc-figures/strength{strength}_steps{steps}-{image}.png" in compensated
    strip = Image.open(out / "doc-figures" / "strength0.7_steps29-latent_strip.png")
    assert strip.size == (96 * 20, 96)  # a tile per step actually taken


def test_regenerating_reuses_runs_and_gives_identical_bytes(doc_store):
    cwd, first = doc_store
    done = regenerate(cwd, cwd / "second")
    assert "5 trials, 5 reused, 0 to run" in done.stderr
    assert_same_bytes(first, cwd / "second")
    hashes = pd.read_csv(cwd / "second" / "doc-figures.csv")["config_hash"]  # config hashes, never run ids
    for name in ("doc-figures.md", "doc-figures.html", "doc-figures.csv"):
        text = (first / name).read_text()
        assert str(cwd) not in text and "mlruns" not in text and "mlartifacts" not in text
    assert hashes.str.len().eq(16).all()


def test_regenerating_after_deleting_the_store_gives_identical_bytes(doc_store):
    cwd, first = doc_store
    fresh = cwd / "fresh"
    fresh.mkdir()
    done = regenerate(fresh, fresh / "out")
    assert "5 trials, 0 reused, 5 to run" in done.stderr
    assert_same_bytes(first, fresh / "out")


BROKEN_IMAGES = "() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"


def open_page(chromium: Path, profile: Path, page_file: Path, screenshot: Path) -> tuple[int, list[str], str]:
    """Load a page in headless chromium: image count, broken images, visible text; saves a screenshot."""
    with browser_page(chromium, profile, page_file) as page:
        count = page.evaluate("() => document.images.length")
        broken = page.evaluate(BROKEN_IMAGES)
        text = page.inner_text("body")
        page.screenshot(path=str(screenshot), full_page=True)
    return count, broken, text


def test_html_report_shows_every_image_in_chromium(doc_store, chromium, tmp_path):
    _, out = doc_store
    count, broken, text = open_page(chromium, tmp_path / "profile", out / "doc-figures.html", tmp_path / "shot.png")
    assert count == (out / "doc-figures.html").read_text().count("<img ") and count >= 20
    assert broken == []
    assert "steps actually taken" in text and "Compensating for the reduced step count" in text
    shot = Image.open(tmp_path / "shot.png")
    assert shot.width >= 1600 and shot.height > 1200  # the whole page, beyond the 1600x1200 window
    assert len(np.unique(np.asarray(shot.convert("L").resize((64, 64))))) > 10  # not a blank page

    # The same check on a copy with one image missing must see it broken.
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    victim = next((damaged / "doc-figures").glob("*-output.png"))
    victim.unlink()
    _, broken, _ = open_page(chromium, tmp_path / "profile2", damaged / "doc-figures.html", tmp_path / "shot2.png")
    assert len(broken) == 1 and broken[0].endswith(victim.name)
