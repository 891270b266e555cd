"""Runs a planned sweep: models loaded once, trials batched, logging overlapped with the next trial.

Data flows one way: composed jobs -> planned trials (sweep.py) -> pipeline calls (runner.py) -> plain
results -> the tracker. Each trial's run is created RUNNING before it denoises; its results go through
`RunWriter`, one background thread that logs them in order while the main thread denoises the next.
The failure policy lives in `SweepEngine`, apart from the trial:
an invalid trial is a FAILED run before any model loads, a trial that raises is FAILED and the sweep goes
on, and an interruption drains what the writer holds, closes every run still open as KILLED and stops.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Callable

from omegaconf import OmegaConf

from sweeplab import interrupts, outcome
from sweeplab.errors import ConfigError, StoreError
from sweeplab.runnames import plan_run_names
from sweeplab.storeprocess import LocalStore
from sweeplab.sweep import ComposedJob, PlannedTrial, batches, cost_order, plan_trials

log = logging.getLogger("sweeplab")

WRITER_DRAIN_SECONDS = 60  # how long an interruption waits for queued results to reach the store
# Trials' results waiting for the writer: with the one it logs and the one the main thread starts, how many
# trials can be in flight when the store fails or a signal comes.
WRITER_QUEUE = 2


@dataclass(frozen=True)
class ExecutionSettings:
    """How trials run; never part of a trial's identity (recorded as tags where they can change bytes)."""

    batch_size: int = 1  # trials that differ only in seed, prompts or noise variations share a pipeline call
    max_loaded_models: int | None = 1  # models kept loaded at once; None: no limit
    multirun: bool = True  # a sweep: a parent run, resume, "#N" trial labels

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"hydra.launcher.batch_size: {self.batch_size} is out of range; allowed 1 or more")
        if self.max_loaded_models is not None and self.max_loaded_models < 1:
            raise ConfigError(
                f"hydra.launcher.max_loaded_models: {self.max_loaded_models} is out of range; allowed 1 or more")


class RunWriter:
    """One background thread that runs logging tasks in the order given, at most `max_pending` waiting.

    The bound keeps memory flat (a task holds a trial's images and latents) and makes the main thread
    wait rather than run far ahead of the store. Tasks handle their own errors; the thread never dies.
    """

    def __init__(self, max_pending: int = WRITER_QUEUE):
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._work, name="sweeplab-writer", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self._queue.put(task)

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, then stop; False if that took longer than `timeout`."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                task()
            except Exception:  # noqa: BLE001 - a task records its own failure; this only keeps the writer alive
                log.exception("sweeplab writer: a logging task failed")


@dataclass
class TrialRun:
    """A trial's MLflow run; `run_id` is None when the store could not create it."""

    planned: PlannedTrial
    tracker: object
    label: str
    run_id: str | None = None


@dataclass
class SweepEngine:
    """Runs composed jobs: validates all, skips finished ones, then runs the rest by cost, batched."""

    settings: ExecutionSettings = field(default_factory=ExecutionSettings)
    models: object = None  # a sweeplab.models.PipelineCache; one per process when given
    parent_run: Callable[[], str | None] = lambda: None  # the sweep's parent run id, asked once the trials are planned
    store: object = field(default_factory=LocalStore)  # opens the trackers: in this process, or a StoreProcess's
    parent_run_id: str | None = field(default=None, init=False)  # set when the sweep runs
    _trackers: dict = field(default_factory=dict)
    _store_failure: str | None = field(default=None, init=False)  # set by the writer when the store stops answering

    def run(self, jobs: list[ComposedJob]) -> None:
        from sweeplab.models import PipelineCache

        if self.models is None:
            self.models = PipelineCache(self.settings.max_loaded_models)
        writer = None
        try:
            if any(job.run_name is None for job in jobs if job.cfg is not None):  # unless the launcher named them
                plan_run_names(jobs)
            planned = plan_trials(jobs)
            self.parent_run_id = self.parent_run() if self.settings.multirun else None
            for job in {id(p.job): p.job for p in planned if p.job.cfg is not None}.values():
                self.tracker_for(job)  # every store opens (or fails in one line) before any model loads
            for invalid in (p for p in planned if p.error is not None):
                self._record_invalid(invalid)
            self._close_orphans()
            runnable = self._skip_finished([p for p in planned if p.trial is not None])
            writer = RunWriter()
            groups = batches(cost_order(runnable), self.settings.batch_size)
            for group in _progress(groups, total=len(runnable)):
                interrupts.check()
                if self._store_failure:  # stop, rather than have every remaining trial fail against it
                    raise StoreError(f"the MLflow store failed mid-sweep ({self._store_failure}); the trials "
                                     "not yet run are not tried: run the same command again to resume")
                self._run_group(group, writer)
            writer.close()
        except BaseException as err:
            interrupts.hold()
            if writer is not None and not writer.close(WRITER_DRAIN_SECONDS):
                log.warning("sweeplab: results still queued after %d s are not logged", WRITER_DRAIN_SECONDS)
            reason = (f"interrupted: {err}" if isinstance(err, KeyboardInterrupt) else
                      f"sweep stopped: {_one_line(err)}" if isinstance(err, StoreError) else
                      f"sweep stopped: {type(err).__name__}: {err}")
            for tracker in self._trackers.values():
                try:
                    tracker.kill_open_runs(reason)
                except Exception as closing:  # noqa: BLE001 - a dead store: say so, and keep the first error
                    log.warning("sweeplab: could not close the open runs as KILLED: %s", _one_line(closing))
            interrupts.finish()
            raise

    # -- planning against the store -------------------------------------------------------------

    def tracker_for(self, job: ComposedJob):
        from sweeplab.tracking import experiment_name, resolve_tracking_uri

        key = (resolve_tracking_uri(job.cfg.tracking.get("uri")), experiment_name(job.cfg, job.choices))
        if key not in self._trackers:
            self._trackers[key] = self.store.tracker(*key)
        return self._trackers[key]

    def _skip_finished(self, runnable: list[PlannedTrial]) -> list[PlannedTrial]:
        """Resume: trials with a FINISHED run of the same config hash are not run again (one store pass each)."""
        if not self.settings.multirun:
            return runnable
        finished: dict[int, dict[str, str]] = {}
        kept, skipped = [], {}
        for planned in runnable:
            trial = planned.trial
            if not trial.resume or trial.iterations > 1:
                kept.append(planned)
                continue
            tracker = self.tracker_for(planned.job)
            if id(tracker) not in finished:
                finished[id(tracker)] = tracker.finished_runs()
            done = finished[id(tracker)].get(trial.spec.config_hash)
            if done is None:
                kept.append(planned)
                continue
            if not tracker.has_output(done):
                print(f"sweeplab: trial {planned.label}: its FINISHED run {done.run_id} has no output.png "
                      f"(artifacts deleted?); running it again", file=sys.stderr)
                kept.append(planned)
                continue
            log.info("trial %s skipped: already FINISHED as run %s (%s); resume=false reruns it",
                     planned.label, done.run_id, trial.spec.config_hash)
            if done.parent_run_id != self.parent_run_id:  # not this sweep's (a requeued task)
                skipped.setdefault(id(tracker), (tracker, {}))[1][trial.spec.config_hash] = done.run_id
        if self.parent_run_id:
            for tracker, hashes in skipped.values():
                tracker.record_skips(self.parent_run_id, hashes)
        return kept

    def _close_orphans(self) -> None:
        """Runs left RUNNING by a process of this host that is gone (kill -9, a crash) are closed as KILLED,
        in every store the sweep opened."""
        if not self.settings.multirun:
            return
        for tracker in self._trackers.values():
            closed = tracker.close_orphaned_runs()
            if closed:
                print(f"sweeplab: closed {closed} runs left RUNNING by processes that are gone (KILLED, "
                      f"tag sweeplab.error)", file=sys.stderr)

    def _record_invalid(self, planned: PlannedTrial) -> None:
        """A trial that fails validation is a FAILED run carrying the error, before any model loads."""
        from sweeplab.tracking import overrides_tag

        message = planned.error
        overrides = overrides_tag(planned.job.overrides)
        _print_error(self._where(planned), message)
        outcome.record_failure(message)
        if planned.job.cfg is None:
            return  # not even composed: there is no tracking config to log to; the summary counts it
        tracker = self.tracker_for(planned.job)
        run_id = tracker.start_run(f"trial {planned.label} (invalid)", _raw_params(planned.job.cfg),
                                   {"sweeplab.overrides": overrides}, self.parent_run_id)
        tracker.end_run(run_id, "FAILED", message)

    # -- running ---------------------------------------------------------------------------------

    def _run_group(self, group: list[PlannedTrial], writer: RunWriter) -> None:
        if group[0].trial.iterations > 1:
            self._run_chain(group[0], writer)
            return
        runs = [self._start(planned, planned.trial) for planned in group]
        try:
            results = self._denoise([planned.trial for planned in group], runs)
        except Exception as err:  # noqa: BLE001 - a failing trial is recorded and the sweep goes on
            if len(group) == 1:
                self._fail(runs[0], err, writer)
                return
            log.warning("a batch of %d trials failed (%s); running them one by one", len(group), _one_line(err))
            for planned, run in zip(group, runs):
                self._run_alone(planned, run, writer)
            return
        for planned, run, result in zip(group, runs, results):
            self._finish(run, planned.trial, result, writer)

    def _run_alone(self, planned: PlannedTrial, run: TrialRun, writer: RunWriter) -> None:
        try:
            (result,) = self._denoise([planned.trial], [run])
        except Exception as err:  # noqa: BLE001
            self._fail(run, err, writer)
            return
        self._finish(run, planned.trial, result, writer)

    def _run_chain(self, planned: PlannedTrial, writer: RunWriter) -> None:
        """iterations=n: each link starts from the previous output and is its own run, tagged with the one before."""
        trial, previous = planned.trial, None
        for iteration in range(trial.iterations):
            run = self._start(planned, trial, previous, label=f"{planned.label}.{iteration}")
            try:
                (result,) = self._denoise([trial], [run])
            except Exception as err:  # noqa: BLE001
                self._fail(run, err, writer)
                return
            self._finish(run, trial, result, writer)
            trial, previous = trial.next_iteration(result.output), run

    def _denoise(self, trials: list, runs: list[TrialRun]) -> list:
        import torch

        from sweeplab.runner import run_batch

        spec = trials[0].spec
        loaded = self.models.get(spec.model_source, spec.device, getattr(torch, spec.dtype), trials[0].compile)
        desc = runs[0].label if len(runs) == 1 else f"{runs[0].label}..{runs[-1].label}"
        return run_batch(trials, loaded, progress_desc=f"trial {desc}")

    # -- what the writer does --------------------------------------------------------------------

    def _start(self, planned: PlannedTrial, trial, previous: TrialRun | None = None,
               label: str | None = None) -> TrialRun:
        """Create the trial's RUNNING run before it denoises, from this thread: the writer may be a trial
        behind (the store process runs at the lowest priority), and a run must show while its trial runs."""
        run = TrialRun(planned, self.tracker_for(planned.job), label or self._label(planned))
        tags = self._run_tags(planned, trial)
        if previous is not None and previous.run_id:
            tags["sweeplab.previous_run_id"] = previous.run_id
        try:
            run.run_id = run.tracker.start_run(_run_name(planned, trial), trial.spec.params(), tags,
                                               self.parent_run_id)
        except Exception as err:  # noqa: BLE001 - the trial still runs; its failure to log is reported
            message = f"could not create its run: {_one_line(err)}"
            _print_error(self._where(planned), message)
            outcome.record_failure(message)
            self._store_failure = self._store_failure or _one_line(err)
        return run

    def _finish(self, run: TrialRun, trial, result, writer: RunWriter) -> None:
        config = OmegaConf.to_container(run.planned.job.cfg, resolve=True)
        log_step_images = run.planned.job.cfg.tracking.log_step_images
        stored = result.for_store()
        for warning in result.warnings:
            log.warning("trial %s: %s", run.label, warning)

        def finish() -> None:
            if run.run_id is None:
                return  # its run could not be created; already reported
            try:
                run.tracker.log_trial_result(run.run_id, stored, config, log_step_images)
            except Exception as err:  # noqa: BLE001 - nothing half-logged is marked FINISHED
                message = f"logging its results failed: {_one_line(err)}"
                _print_error(self._where(run.planned), message)
                outcome.record_failure(message)
                self._store_failure = self._store_failure or _one_line(err)
                try:
                    run.tracker.end_run(run.run_id, "FAILED", message)
                except Exception:  # noqa: BLE001 - the store is gone: the sweep stops and says so
                    pass
                return
            run.tracker.end_run(run.run_id, "FINISHED")
            log.info("trial %s: %d steps taken, %d denoiser evaluations, %.2f s -> run %s",
                     run.label, result.steps_taken, result.denoiser_evals, result.seconds, run.run_id)

        writer.submit(finish)

    def _fail(self, run: TrialRun, err: Exception, writer: RunWriter) -> None:
        message = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
        message = _one_line(message) or type(err).__name__
        _print_error(self._where(run.planned), message)
        if not isinstance(err, ConfigError):
            log.debug("trial failed", exc_info=err)
        outcome.record_failure(message)

        def fail() -> None:
            if run.run_id is not None:
                run.tracker.end_run(run.run_id, "FAILED", message)

        writer.submit(fail)

    # -- small helpers -----------------------------------------------------------------------------

    def _run_tags(self, planned: PlannedTrial, trial) -> dict[str, str]:
        from sweeplab.tracking import (COMPILE_TAG, CONFIG_HASH_TAG, LORA_SHA256_TAG, environment_tags,
                                       overrides_tag, owner_tag)

        spec = trial.spec
        tags = {
            CONFIG_HASH_TAG: spec.config_hash,
            "sweeplab.overrides": overrides_tag(planned.job.overrides),
            "sweeplab.scheduler": spec.scheduler,
            **owner_tag(),
            COMPILE_TAG: str(trial.compile).lower(),
            **environment_tags(spec.device, spec.dtype),
        }
        if trial.prompt_template:
            tags["sweeplab.prompt_search"], tags["sweeplab.prompt_replace"] = trial.prompt_template
        if spec.lora:
            tags[LORA_SHA256_TAG] = ",".join(f"{weights.name}:{weights.sha256}" for weights in spec.lora)
        return tags

    def _label(self, planned: PlannedTrial) -> str:
        return planned.label if self.settings.multirun else "run"

    def _where(self, planned: PlannedTrial) -> str | None:
        from sweeplab.tracking import overrides_tag

        return f"trial {planned.label} [{overrides_tag(planned.job.overrides)}]" if self.settings.multirun else None


def _run_name(planned: PlannedTrial, trial) -> str:
    """The trial's name within its sweep (runnames.py); each link of an iterations chain adds its number."""
    name = planned.job.run_name.for_trial(trial.spec.config_hash)
    return name + (f" it{trial.spec.iteration}" if trial.iterations > 1 else "")


def _raw_params(cfg) -> dict[str, str]:
    """What a trial that failed validation asked for, so its FAILED run still shows it."""
    from sweeplab.trial import PARAM_KEYS

    raw = {key: OmegaConf.select(cfg, key, default=None) for key in PARAM_KEYS}
    path = OmegaConf.select(cfg, "model.path", default=None)
    # named as a valid trial's run names it (ModelSource.name): the folder or file, not the user's whole path
    raw["model"] = (PurePath(str(path)).name if path else OmegaConf.select(cfg, "model.hub_id", default=None)
                    or OmegaConf.select(cfg, "model.name", default=None))
    raw["sampler"] = OmegaConf.select(cfg, "sampler.name", default=None)
    return {key: str(value) for key, value in raw.items() if value is not None and not OmegaConf.is_config(value)}


def _one_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _print_error(where: str | None, message: str) -> None:
    print(f"sweeplab: error: {where}: {message}" if where else f"sweeplab: error: {message}", file=sys.stderr)


def _progress(groups: list, total: int):
    """The sweep's progress over trials (a batch advances it by its size); silent when stderr is no terminal."""
    from tqdm import tqdm

    with tqdm(total=total, desc="sweeplab", unit="trial", disable=None, position=1, leave=False) as bar:
        for group in groups:
            yield group
            bar.update(len(group))
