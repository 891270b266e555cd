"""Run sweeplab, or a Python script, inside a process that watches it: when the denoiser is first called,
and (with --categories) where the main thread's wall-clock time goes.

    python benchmarks/inprocess_probe.py --report FILE [--categories FILE] -- sweeplab ARG...
    python benchmarks/inprocess_probe.py --report FILE -- path/to/script.py ARG...

`sweeplab` runs `sweeplab.cli.main()` with sys.argv as the console script would set it. The report (JSON):
- started, finished: time.time() when this file began running and when the program returned
  (the spawning process knows when it spawned: the rest is interpreter start-up and exit);
- denoiser_calls: time.time() of every call of the first denoiser module (UNet2DConditionModel), found
  with torch's global forward pre-hook, which is installed the moment the program imports torch (an import
  hook: importing torch here first would move its import cost) and replaced by a hook on that one module
  after its first call, so the hundreds of submodule calls per step are not slowed;
- exit_code;
- with --categories (a JSON list of [name, [pattern, ...]] rows): a stack sampler thread every --interval s.
  Each sample's elapsed time goes to the first row (in table order) with a pattern matching any frame on
  the stack, as fnmatch patterns on "module:qualname"; none: "other". `main_thread` sums the main thread,
  `other_threads` the other Python threads (thread-seconds; a thread whose innermost frame waits in
  threading, queue or selectors is idle and not counted), `unmatched` the main thread's "other" time by
  its innermost non-standard-library function, to show what the table misses.
Standard library only at the top, so the observed program pays for its own imports.
"""

from __future__ import annotations

import time

STARTED = time.time()

import argparse  # noqa: E402  (after the start stamp: this file's own imports are part of what is measured)
import fnmatch  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

DENOISER_CLASSES = frozenset({"UNet2DConditionModel", "OptimizedModule"})  # OptimizedModule: torch.compile
TORCH_MODULE = "torch.nn.modules.module"
OTHER = "other"
IDLE_MODULES = frozenset({"threading", "queue", "selectors"})  # another thread waiting in these is idle: not counted


def _module(frame) -> str:
    return frame.f_globals.get("__name__", "?")


class StackCategories:
    """Maps a stack to the first category row with a pattern matching one of its frames."""

    def __init__(self, rows: list[tuple[str, list[str]]]):
        self.names = [name for name, _ in rows] + [OTHER]
        self._rows = rows
        self._row_of: dict[tuple[str, str], int] = {}  # (module, qualname) -> its first matching row, or len(rows)

    def frame_name(self, frame) -> str:
        return f"{_module(frame)}:{frame.f_code.co_qualname}"

    def _row(self, frame) -> int:
        key = (_module(frame), frame.f_code.co_qualname)  # not the code: equal code in two modules compares equal
        row = self._row_of.get(key)
        if row is None:
            name = ":".join(key)
            row = next((index for index, (_, patterns) in enumerate(self._rows)
                        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)), len(self._rows))
            self._row_of[key] = row
        return row

    def of_stack(self, frame) -> str:
        best = len(self._rows)
        while frame is not None:
            best = min(best, self._row(frame))
            frame = frame.f_back
        return self.names[best]


def innermost_library_function(frame, categories: StackCategories) -> str:
    """The innermost frame outside the standard library (and this file): the most telling unmatched name."""
    innermost = frame
    while frame is not None:
        module = _module(frame)
        if module.split(".")[0] not in sys.stdlib_module_names and module != __name__:
            return categories.frame_name(frame)
        frame = frame.f_back
    return categories.frame_name(innermost)


class AfterImport:
    """A sys.meta_path finder that calls `then(module)` right after the program imports module `name`."""

    def __init__(self, name: str, then):
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = next(filter(None, (finder.find_spec(fullname, path, target) for finder in sys.meta_path
                                  if hasattr(finder, "find_spec"))), None)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                self.then(module)

            spec.loader.exec_module = exec_module
        return spec


class DenoiserCalls:
    """time.time() of each call of the first denoiser module, via torch's global forward pre-hook."""

    def __init__(self):
        self.times: list[float] = []
        self._global_hook = None
        sys.meta_path.insert(0, AfterImport(TORCH_MODULE, self._install))

    def _install(self, torch_module) -> None:
        self._global_hook = torch_module.register_module_forward_pre_hook(self._on_any_forward)

    def _on_any_forward(self, module, args) -> None:
        if type(module).__name__ not in DENOISER_CLASSES or self.times:
            return
        self.times.append(time.time())
        self._global_hook.remove()  # torch copied the hook list for this call: removing it here is safe
        module.register_forward_pre_hook(self._on_denoiser)

    def _on_denoiser(self, module, args) -> None:
        self.times.append(time.time())


class StackSampler(threading.Thread):
    """Every `interval` seconds, adds the time since the last sample to each Python thread's stack category."""

    def __init__(self, categories: StackCategories, interval: float):
        super().__init__(name="inprocess-probe", daemon=True)
        self.categories = categories
        self.interval = interval
        self.main_thread: Counter = Counter()
        self.other_threads: Counter = Counter()
        self.unmatched: Counter = Counter()
        self._stopping = threading.Event()
        self._main_id = threading.main_thread().ident

    def run(self) -> None:
        last = time.perf_counter()
        while not self._stopping.wait(self.interval):
            now = time.perf_counter()
            self._sample(now - last)
            last = now

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def _sample(self, elapsed: float) -> None:
        for ident, frame in sys._current_frames().items():
            if ident == self.ident or (ident != self._main_id and _module(frame) in IDLE_MODULES):
                continue
            category = self.categories.of_stack(frame)
            if ident == self._main_id:
                self.main_thread[category] += elapsed
                if category == OTHER:
                    self.unmatched[innermost_library_function(frame, self.categories)] += elapsed
            else:
                self.other_threads[category] += elapsed


def run_program(target: str, args: list[str]) -> int:
    """Run sweeplab's console entry point or a script as __main__; return its exit code."""
    try:
        if target == "sweeplab":
            sys.argv = ["sweeplab", *args]
            from sweeplab.cli import main

            main()
        else:
            sys.argv = [target, *args]
            sys.path.insert(0, str(Path(target).resolve().parent))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--categories", type=Path, help="a JSON file of [name, [pattern, ...]] rows: sample stacks")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between stack samples")
    parser.add_argument("target", help="sweeplab, or a Python script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    denoiser = DenoiserCalls()
    rows = json.loads(options.categories.read_text()) if options.categories else None
    sampler = StackSampler(StackCategories(rows), options.interval) if rows else None
    if sampler:
        sampler.start()
    exit_code = 1
    try:
        exit_code = run_program(options.target, options.args)
    finally:
        finished = time.time()
        report = {"started": STARTED, "finished": finished, "exit_code": exit_code, "denoiser_calls": denoiser.times}
        if sampler:
            sampler.stop()
            report.update(main_thread=dict(sampler.main_thread), other_threads=dict(sampler.other_threads),
                          unmatched=dict(sampler.unmatched.most_common(12)))
        options.report.write_text(json.dumps(report))
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
