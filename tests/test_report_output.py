"""Where reports are written and what they replace; user text in Markdown stays text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from sweeplab.report.page import MANIFEST, Picture, Report, ReportFolderError, Table, to_markdown, write_report


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeplab.report", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _store_with_one_run(folder: Path, experiment: str) -> None:
    store = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    run = store.create_run(store.create_experiment(experiment), tags={"sweeplab.config_hash": "h1"})
    store.set_terminated(run.info.run_id, "FINISHED")


@pytest.mark.parametrize(("experiment", "folder"), [("../../x", "x"), ("/tmp/v", "tmp_v"), ("a b/c", "a_b_c")])
def test_default_folder_is_a_sanitised_experiment_name_under_reports(tmp_path, experiment, folder):
    cwd = tmp_path / "one" / "two"
    cwd.mkdir(parents=True)
    _store_with_one_run(cwd, experiment)
    done = report_cli("determinism", "--experiment", experiment, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"reports/{folder}/determinism.md"
    assert (cwd / "reports" / folder / "determinism.md").is_file()
    assert sorted(p.name for p in tmp_path.rglob("determinism.md")) == ["determinism.md"]  # nowhere else


def test_out_is_used_as_given_and_a_folder_sweeplab_did_not_make_is_left_alone(tmp_path):
    _store_with_one_run(tmp_path, "demo")
    given = tmp_path / "elsewhere" / "given"
    done = report_cli("determinism", "--experiment", "demo", "--out", str(given), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (given / "determinism.csv").is_file() and (given / "determinism" / MANIFEST).is_file()

    theirs = tmp_path / "theirs"
    (theirs / "determinism").mkdir(parents=True)
    (theirs / "determinism" / "keep.txt").write_text("mine")
    refused = report_cli("determinism", "--experiment", "demo", "--out", str(theirs), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"sweeplab-report: error: {theirs / 'determinism'} exists and was not written by "
                                      f"sweeplab-report (no {theirs / 'determinism' / MANIFEST}); move it away or "
                                      "pass --out DIR")
    assert (theirs / "determinism" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in theirs.rglob("*")) == ["determinism", "keep.txt"]


def _report_with(images: list[str]) -> Report:
    report = Report("strips", "Latent strips")
    for stem in images:
        report.picture(report.add_image(stem, Image.new("RGB", (8, 8), "red"), stem))
    return report


def test_rewriting_replaces_only_the_files_the_last_report_listed(tmp_path):
    write_report(_report_with(["a", "b"]), tmp_path)
    (tmp_path / "strips" / "keep.txt").write_text("not the report's")
    (tmp_path / "notes.md").write_text("not the report's either")
    write_report(_report_with(["a"]), tmp_path)
    assert sorted(p.name for p in (tmp_path / "strips").iterdir()) == [MANIFEST, "a.png", "keep.txt"]
    assert (tmp_path / "notes.md").is_file()
    assert (tmp_path / "strips" / MANIFEST).read_text().splitlines()[1:] == ["strips.html", "strips.md",
                                                                            "strips/a.png"]


def test_a_report_file_without_manifest_is_not_overwritten(tmp_path):
    (tmp_path / "strips.md").write_text("someone's notes")
    with pytest.raises(ReportFolderError, match=r"strips.md exists and was not written by sweeplab-report"):
        write_report(_report_with(["a"]), tmp_path)
    assert (tmp_path / "strips.md").read_text() == "someone's notes" and not (tmp_path / "strips").exists()


def test_the_committed_reports_carry_their_manifest():
    reports = Path(__file__).resolve().parents[1] / "reports" / "invokeai_img2img"
    listed = (reports / "doc-figures" / MANIFEST).read_text().splitlines()[1:]
    made = sorted(str(path.relative_to(reports)) for path in reports.rglob("*") if path.is_file())
    assert [name for name in made if not name.endswith(MANIFEST)] == listed


def test_markdown_escapes_user_text_everywhere():
    prompt = "<script>alert(1)</script> & | ```"
    report = Report("steps-vs-strength", f"Grid: {prompt}")
    report.heading(f"prompt {prompt}")
    report.text(f"prompt: {prompt}")
    report.code(f"sweeplab prompt='{prompt}'")
    report.table(Table([f"prompt {prompt}"], [[[f"failed: {prompt}", Picture("x/a.png", "alt <b>")]]]))
    text = to_markdown(report)
    before, code, after = text.split("````\n")
    assert "<script>" not in before + after and "<b>" not in before + after
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; \\|") == 5  # title, heading, paragraph, header, cell
    assert "failed: &lt;script&gt;" in text and '<img src="x/a.png" alt="alt &lt;b&gt;">' in text
    assert "````\nsweeplab prompt='<script>alert(1)</script> & | ```'\n````" in text  # inert inside a longer fence
