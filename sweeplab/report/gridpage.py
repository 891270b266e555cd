"""The interactive grid page: pick any swept key for X and Y, step through the others, switch what a cell shows.

One HTML file that needs no server and no network: the trials travel inside it as JSON, its script is inline, and
the thumbnails are PNGs in the folder beside it, loaded lazily so that hundreds of trials stay quick. Like every
report its bytes depend only on the runs; links to the runs in an MLflow UI (run ids) come only when asked for.
"""

from __future__ import annotations

import html
import json
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from PIL import Image

from sweeplab.report.grid import FAILED_FILL, FAILED_INK
from sweeplab.report.page import Report
from sweeplab.report.reports import (IMAGES, constants, fitted, index_by, label, ordered_values, slug,
                                     trial_table)
from sweeplab.report.runs import Artifacts, ReportError, format_value, varying_keys

SHOWN = {"output": "output", "start": "start image", "latent_strip": "latent strip"}  # what a cell can show


def mlflow_ui(given: str, tracking_uri: str) -> str:
    """The MLflow UI address run links point at: the one given, else the tracking server's, never its password."""
    address = given or tracking_uri
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        what = f"'{given}' is not an MLflow UI address" if given else f"the tracking URI {tracking_uri} is no server"
        raise ReportError(f"--run-links: {what}; allowed: http(s)://HOST[:PORT], e.g. --run-links "
                          "http://127.0.0.1:5000")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def grid_page(frame: pd.DataFrame, artifacts: Artifacts, x: str | None = None, y: str | None = None,
              thumb: int = 128, run_links: str | None = None) -> Report:
    """The page, with the trials as JSON; run_links is an MLflow UI address, or None for no links (no run ids)."""
    keys = varying_keys(frame)
    for option, key in (("--x", x), ("--y", y)):
        if key is not None and key not in keys:
            raise ReportError(f"{option}: '{key}' is not a swept key of these runs; allowed: "
                              f"{', '.join(keys) or 'none (every trial has the same params)'}")
    if x is not None and x == y:
        raise ReportError(f"--x and --y must differ; got {x} for both")
    index_by(frame, keys)  # two trials in one place cannot be shown
    x = x or next((key for key in keys if key != y), "")
    y = y or next((key for key in keys if key != x), "")
    report = Report("grid-page", "Interactive grid" + (f": {', '.join(keys)}" if keys else ""))
    report.text(constants(frame))
    finished = int((frame["status"] == "FINISHED").sum())
    report.text(f"{len(frame)} trials: {finished} finished, {len(frame) - finished} failed. Open grid-page.html in "
                "a browser to choose the keys along X and Y, step through the others and switch each cell between "
                "its output, start image (the initial image SD sees) and latent strip.")
    artifacts.fetch(frame, tuple(IMAGES[name] for name in SHOWN))
    values = {key: [format_value(value) for value in ordered_values(frame, key)]
              + (["?"] if frame[key].isna().any() else []) for key in keys}  # "?": a failed trial that lacks it
    trials = [_trial(report, artifacts, row, keys, values, thumb, run_links) for _, row in frame.iterrows()]
    data = {"keys": [{"name": key, "values": values[key]} for key in keys], "x": x, "y": y,
            "shown": list(SHOWN.items()), "trials": trials}
    report.html(_markup(data, thumb))
    report.data = trial_table(frame, keys)
    return report


def _trial(report: Report, artifacts: Artifacts, row, keys: list[str], values: dict[str, list[str]], thumb: int,
           run_links: str | None) -> dict:
    """A trial as the page's script reads it: where it lies (a value index per key), what it measured, its images."""
    trial = {"at": [values[key].index(format_value(row[key])) for key in keys], "label": label(row, keys),
             "status": row["status"]}
    if run_links:
        trial["run"] = f"{run_links}/#/experiments/{row['experiment_id']}/runs/{row['run_id']}"
    if row["status"] != "FINISHED":
        return {**trial, "error": row["error"] if isinstance(row["error"], str) else row["status"]}
    images = {}
    for name in SHOWN:
        full = artifacts.image(row["run_id"], IMAGES[name])
        small = _strip_thumbnail(full, thumb) if name == "latent_strip" else fitted(full, thumb)
        images[name] = report.add_image(f"{slug(row, keys)}-{name}", small, f"{SHOWN[name]}: {trial['label']}").src
    return {**trial, "steps_taken": int(row["steps_taken"]), "denoiser_evals": int(row["denoiser_evals"]), "images": images}


def _strip_height(thumb: int) -> int:
    """Latent strips are shown half a thumbnail high: a row of tiles that scrolls sideways inside its cell."""
    return max(1, thumb // 2)


def _strip_thumbnail(strip: Image.Image, thumb: int) -> Image.Image:
    height = min(strip.height, _strip_height(thumb))
    return strip.resize((max(1, round(strip.width * height / strip.height)), height), Image.Resampling.LANCZOS)


def _markup(data: dict, thumb: int) -> str:
    """The controls, an empty grid the script fills, the trials as JSON and the script."""
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).replace("<", "\\u003c")  # no </script>
    return "\n".join([
        f"<style>{_style(thumb)}</style>",
        '<form id="controls" onsubmit="return false">',
        '<label>X <select id="axis-x"></select></label> <label>Y <select id="axis-y"></select></label>',
        '<span id="steppers"></span>',
        '<label>every cell shows <select id="show">'
        + "".join(f'<option value="{html.escape(name)}">{html.escape(words)}</option>' for name, words in SHOWN.items())
        + "</select></label>",
        "</form>",
        '<table id="grid"></table>',
        f'<script type="application/json" id="grid-data">{payload}</script>',
        f"<script>{PAGE_SCRIPT}</script>",
    ])


# @THUMB@, @HALF@, @FILL@ and @LINE@ are filled in by _style; a failed cell is the grid PNG's mark, grey, crossed out.
PAGE_STYLE = """#controls label{margin-right:1.2em;white-space:nowrap}#steppers label{display:inline-block}
#grid td{width:@THUMB@px}.view{max-width:@THUMB@px;overflow-x:auto}.view img.output,.view img.start{width:@THUMB@px}
.view img.latent_strip{height:@HALF@px;max-width:none}.toggle button{font-size:11px;padding:1px 4px}
.toggle button[aria-pressed=true]{font-weight:bold;background:#cde}.numbers{font-size:12px;color:#444}
.failed{width:@THUMB@px;height:@THUMB@px;color:#333;font-size:12px;overflow:hidden;background-color:@FILL@;
background-image:linear-gradient(to top right,@LINE@),linear-gradient(to bottom right,@LINE@)}
.failed b{text-decoration:line-through}.missing{width:@THUMB@px;color:#888}"""


def _style(thumb: int) -> str:
    def colour(rgb: tuple[int, int, int]) -> str:
        return "#" + "".join(f"{channel:02x}" for channel in rgb)

    ink = colour(FAILED_INK)
    line = f"transparent calc(50% - 2px),{ink} calc(50% - 1px),{ink} calc(50% + 1px),transparent calc(50% + 2px)"
    css = PAGE_STYLE
    for token, value in {"THUMB": thumb, "HALF": _strip_height(thumb), "FILL": colour(FAILED_FILL), "LINE": line}.items():
        css = css.replace(f"@{token}@", str(value))
    return css


# The page's behaviour. State: the X and Y keys, a value index for every other key, what every cell shows and
# what single cells were switched to. Every change re-renders the table from the JSON.
PAGE_SCRIPT = """
(() => {
  const data = JSON.parse(document.getElementById("grid-data").textContent);
  const keys = data.keys.map(key => key.name);
  const trials = new Map(data.trials.map(trial => [trial.at.join(","), trial]));
  const state = {x: data.x, y: data.y, fixed: Object.fromEntries(keys.map(key => [key, 0])), show: "output",
                 switched: new Map()};
  const axisX = document.getElementById("axis-x"), axisY = document.getElementById("axis-y");
  const show = document.getElementById("show"), steppers = document.getElementById("steppers");
  const grid = document.getElementById("grid");
  const element = (tag, attributes, ...children) => {
    const made = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) made.setAttribute(name, value);
    made.append(...children);
    return made;
  };
  const valuesOf = key => data.keys.find(entry => entry.name === key).values;
  const words = Object.fromEntries(data.shown);
  const count = (number, noun) => `${number} ${noun}${number === 1 ? "" : "s"}`;

  for (const select of [axisX, axisY]) {
    select.append(element("option", {value: ""}, "(none)"), ...keys.map(key => element("option", {value: key}, key)));
  }
  const axis = (name, other, select) => {
    select.onchange = () => {
      if (select.value && select.value === state[other]) state[other] = state[name];  // the other axis' key: swap
      state[name] = select.value;
      render();
    };
  };
  axis("x", "y", axisX);
  axis("y", "x", axisY);
  show.onchange = () => { state.show = show.value; state.switched.clear(); render(); };

  function drawSteppers() {
    steppers.replaceChildren();
    for (const key of keys.filter(key => key !== state.x && key !== state.y)) {
      const values = valuesOf(key);
      const select = element("select", {"data-key": key},
                             ...values.map((value, index) => element("option", {value: index}, value)));
      select.value = state.fixed[key];
      select.onchange = () => { state.fixed[key] = Number(select.value); render(); };
      const step = delta => {
        const button = element("button", {type: "button", "data-step": key, "data-delta": delta},
                               delta < 0 ? "\\u2039" : "\\u203a");
        const next = state.fixed[key] + delta;
        button.disabled = next < 0 || next >= values.length;
        button.onclick = () => { state.fixed[key] = next; render(); };
        return button;
      };
      steppers.append(element("label", {}, `${key} `, step(-1), select, step(1)), " ");
    }
  }

  function cell(trial) {
    if (!trial) return element("div", {class: "missing"}, "no run");
    const place = trial.at.join(",");
    const extras = trial.run ? [element("a", {class: "run", href: trial.run}, "MLflow run")] : [];
    if (trial.status !== "FINISHED") {
      return element("div", {class: "failed", title: trial.error}, element("b", {}, "failed"), element("br"),
                     trial.error, element("br"), ...extras);
    }
    const shown = state.switched.get(place) || state.show;
    const image = element("img", {loading: "lazy", class: shown, alt: `${words[shown]}: ${trial.label}`});
    image.src = trial.images[shown];
    const toggle = element("div", {class: "toggle"}, ...data.shown.map(([name, text]) => {
      const button = element("button", {type: "button", "data-show": name, "aria-pressed": name === shown}, text);
      button.onclick = () => { state.switched.set(place, name); render(); };
      return button;
    }));
    const numbers = element("div", {class: "numbers"}, `${count(trial.steps_taken, "step")} taken, `,
                            count(trial.denoiser_evals, "denoiser evaluation"));
    return element("div", {class: "cell", "data-place": place}, element("div", {class: "view"}, image), toggle,
                   numbers, ...extras);
  }

  function render() {
    axisX.value = state.x;
    axisY.value = state.y;
    drawSteppers();
    const columns = state.x ? valuesOf(state.x) : [""], rows = state.y ? valuesOf(state.y) : [""];
    const at = (column, row) => keys.map(key => key === state.x ? column : key === state.y ? row : state.fixed[key]);
    const corner = [state.y, state.x].filter(Boolean).join(" \\\\ ");
    const header = element("tr", {}, element("th", {}, corner),
                           ...columns.map(value => element("th", {}, state.x ? `${state.x}: ${value}` : "")));
    const body = rows.map((rowValue, row) => element("tr", {},
      element("th", {}, state.y ? `${state.y}: ${rowValue}` : ""),
      ...columns.map((_, column) => element("td", {}, cell(trials.get(at(column, row).join(",")))))));
    grid.replaceChildren(element("thead", {}, header), element("tbody", {}, ...body));
  }

  render();
})();
"""
