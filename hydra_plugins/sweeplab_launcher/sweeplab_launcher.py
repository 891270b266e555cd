"""Launcher and sweeper plugins that hand sweeplab's engine a whole sweep instead of one job at a time.

Hydra finds these modules in the `hydra_plugins` namespace package and imports them while it scans for
plugins, so this module imports only Hydra and sweeplab's torch-free planning code; the engine, torch and
MLflow load when a sweep launches. Hydra runs plugin modules outside sys.modules while it scans, so
the dataclass confs here keep real (not postponed) annotations.
"""

import logging
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sweeplab.errors import ConfigError, exit_for
from sweeplab.runnames import plan_run_names
from sweeplab.sweep import ComposedJob, JobComposer
from sweeplab.sweepaxes import read_axes

log = logging.getLogger(__name__)


@dataclass
class SweeplabLauncherConf:
    """`hydra/launcher=sweeplab`: every trial of the sweep in this process, planned and ordered as a whole."""

    _target_: str = "hydra_plugins.sweeplab_launcher.sweeplab_launcher.SweeplabLauncher"
    batch_size: int = 1  # trials differing only in seed, prompts or noise variations that share a pipeline call
    max_loaded_models: Optional[int] = 1  # models loaded at once (trials run ordered by model); null: no limit


@dataclass
class SweeplabSweeperConf(BasicSweeperConf):
    """`hydra/sweeper=sweeplab`: a grid times zipped lists (sweeplab.sweepaxes), checked without composing every job."""

    _target_: str = "hydra_plugins.sweeplab_launcher.sweeplab_launcher.SweeplabSweeper"
    # params (Hydra's): the grid, {key: "a,b"}; every combination of the grid's values is a trial
    grid_params: Dict[str, Any] = field(default_factory=dict)  # the grid too, hydra-list-sweeper's name: a,b or [a, b]
    list_params: Dict[str, Any] = field(default_factory=dict)  # zipped: equal-length lists, paired by position


ConfigStore.instance().store(group="hydra/launcher", name="sweeplab", node=SweeplabLauncherConf, provider="sweeplab")
ConfigStore.instance().store(group="hydra/sweeper", name="sweeplab", node=SweeplabSweeperConf, provider="sweeplab")


class SweeplabSweeper(BasicSweeper):
    """Hydra's basic sweeper with zipped keys: the grid's combinations times the pairs of `list_params`.

    It checks each batch by composing every distinct set of config-group choices once: Hydra's basic sweeper
    composes every job to check it, and the launcher composes it again; at about 50 ms a composition that
    doubles as a per-trial cost. A bad group choice still stops the sweep before anything runs; a bad value
    fails its own trial, recorded as a FAILED run.
    """

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 grid_params: Optional[Dict[str, Any]] = None, list_params: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(max_batch_size, params)
        self.sweeper_params = {"params": self.params, "grid_params": grid_params, "list_params": list_params}

    def _parse_config(self) -> List[str]:
        """None here: `split_arguments` reads the config's grid and zipped lists together with the command line."""
        return []

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        """The basic sweeper's batches of jobs, each job the grid's overrides and one zipped pair's."""
        try:
            axes = read_axes(self.sweeper_params, [o.input_line for o in overrides], self.hydra_context.config_loader)
            jobs = axes.trials()
        except ConfigError as err:  # the sweep callback checks the same before the store opens; this is the backstop
            exit_for(err)
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        composer = JobComposer(self.hydra_context.config_loader, self.config)
        for overrides in batch:
            composer.check_structure(list(overrides))


class SweeplabLauncher(Launcher):
    """Runs the whole sweep in this process through sweeplab's engine: one model load per model."""

    def __init__(self, batch_size: int = 1, max_loaded_models: Optional[int] = 1) -> None:
        self.batch_size = batch_size
        self.max_loaded_models = max_loaded_models
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        _log_to(self.config, sweep_dir)
        log.info("Launching %d trials in this process (hydra/launcher=sweeplab)", len(job_overrides))
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        composer = JobComposer(self.hydra_context.config_loader, self.config)
        jobs = [composer.compose(num, list(o)) for num, o in enumerate(job_overrides, start=initial_job_idx)]
        return run_jobs(jobs, self.batch_size, self.max_loaded_models, *_sweep_store(self.hydra_context))


def run_jobs(jobs: List[ComposedJob], batch_size: int, max_loaded_models: Optional[int],
             parent_run: Callable[[], Optional[str]], store: Any = None) -> List[JobReturn]:
    """The engine over composed jobs; one COMPLETED JobReturn each (failures are FAILED runs, not exceptions).
    `store` opens the trackers (storeprocess.py); None: in this process."""
    from sweeplab.engine import ExecutionSettings, SweepEngine
    from sweeplab.storeprocess import LocalStore

    settings = ExecutionSettings(batch_size=batch_size, max_loaded_models=max_loaded_models)
    try:
        SweepEngine(settings, parent_run=parent_run, store=store or LocalStore()).run(jobs)
    except ConfigError as err:  # the store cannot be used: one line, before any model loads
        exit_for(err)
    return [_job_return(job) for job in jobs]


def _sweep_store(hydra_context: HydraContext) -> tuple[Callable[[], Optional[str]], Any]:
    """How to get the sweep's parent run, and its store: from sweeplab's callback, else the environment's
    parent run and a store in this process."""
    from sweeplab.tracking import PARENT_RUN_ENV, sweep_callback

    callback = sweep_callback(hydra_context)
    if callback is None:
        return (lambda: os.environ.get(PARENT_RUN_ENV)), None
    return callback.parent_run, callback.store


def _job_return(job: ComposedJob) -> JobReturn:
    result = JobReturn(overrides=job.overrides, cfg=job.cfg, working_dir=os.getcwd(), task_name="sweeplab")
    result.status = JobStatus.COMPLETED
    result.return_value = None
    return result


def _log_to(config: DictConfig, output_dir: Path) -> None:
    """Hydra's job logging, set up once for the sweep: its log file goes to the sweep's folder.
    (A requeued SLURM task gets the config that HydraConfig made read-only in its first run.)"""
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(output_dir.resolve())
    HydraConfig.instance().set_config(config)
    configure_log(config.hydra.job_logging, config.hydra.verbose)


class SweeplabSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher, cutting the sweep into tasks of `trials_per_task` trials.

    Each task (one element of the SLURM job array) loads its model once and runs its trials through the
    engine. A requeued task (pre-emption, time limit) runs the same trials again, and resume skips the
    ones it had finished.
    """

    def __init__(self, trials_per_task: Optional[int] = None, batch_size: int = 1, **params: Any) -> None:
        self.trials_per_task = trials_per_task
        self.batch_size = batch_size
        super().__init__(**params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from submitit.core.utils import FailedJobError

        composer = JobComposer(self.hydra_context.config_loader, self.config)
        jobs = [composer.compose(num, list(o)) for num, o in enumerate(job_overrides, start=initial_job_idx)]
        plan_run_names(jobs)  # over the whole sweep: a task's trials are named as in the sweep, not as in the task
        chunks = chunk_jobs(jobs, self.trials_per_task, self.params.get("array_parallelism") or 1)
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **self._init_params())
        executor.update_parameters(**self._queue_params())
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        log.info("%d trials in %d SLURM tasks of up to %d", len(jobs), len(chunks), max(map(len, chunks)))
        try:
            _sweep_store(self.hydra_context)[0]()  # tasks find the parent run in the environment they inherit
        except ConfigError as err:  # the store cannot be used
            exit_for(err)
        state = Singleton.get_state()
        task_trials = [[(j.num, j.overrides, j.run_name) for j in chunk] for chunk in chunks]
        try:
            tasks = executor.map_array(self, task_trials, ["hydra.sweep.dir"] * len(chunks), [c[0].num for c in chunks],
                                       [f"chunk_{c[0].num}" for c in chunks], [state] * len(chunks))
        except FailedJobError as err:  # sbatch refused the request
            self._refused(str(err))
        return [job_return for task in tasks for job_return in task.results()[0]]

    def __call__(self, chunk: list, job_dir_key: str, job_num: int, job_id: str, singleton_state: dict) -> list:
        """One SLURM task: compose its trials and run them through the engine."""
        from sweeplab import interrupts
        from sweeplab.tracking import PARENT_RUN_ENV

        Singleton.set_state(singleton_state)
        setup_globals()
        threads = task_threads(os.environ)
        if threads:
            import torch  # the task's first use of torch: the plugin module stays torch-free for Hydra's scan

            torch.set_num_threads(threads)
        interrupts.install()  # submitit's own SIGUSR2 handler (requeue) runs after the runs are closed
        sweep_dir = Path(str(OmegaConf.select(self.config, job_dir_key)))
        _log_to(self.config, sweep_dir)
        composer = JobComposer(self.hydra_context.config_loader, self.config)
        jobs = [replace(composer.compose(num, list(overrides)), run_name=run_name)
                for num, overrides, run_name in chunk]
        return run_jobs(jobs, self.batch_size, 1, lambda: os.environ.get(PARENT_RUN_ENV))

    def _refused(self, sbatch_error: str) -> None:
        """One line quoting sbatch's reason and the key to change; the parent run FAILED with it; exit 2."""
        from sweeplab.tracking import sweep_callback

        lines = [line.strip() for line in sbatch_error.splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no reason given")
        hint = next((hint for marker, hint in SBATCH_HINTS if marker in reason.lower()), SBATCH_HINTS[-1][1])
        message = f"SLURM refused the sweep's job array: {reason}; {hint}"
        callback = sweep_callback(self.hydra_context)
        if callback is not None:
            callback.fail(message)
        print(f"sweeplab: error: {message}", file=sys.stderr)
        sys.exit(2)

    def _init_params(self) -> dict:
        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        return init

    def _queue_params(self) -> dict:
        """As hydra-submitit-launcher passes them: its base keys as they are, the rest as slurm_<key>."""
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        return {key if key in base else f"{self._EXECUTOR}_{key}": value for key, value in self.params.items()
                if key not in ("submitit_folder", "max_num_timeout")}


def task_threads(environ: Mapping[str, str]) -> Optional[int]:
    """Torch threads for a SLURM task: the CPUs SLURM gave it (`cpus_per_task`), unless OMP_NUM_THREADS is set.

    Torch otherwise starts a thread per core of the node, and on a cluster that does not bind a task to its
    CPUs (slurm.conf TaskPlugin=task/none, as the local test cluster) tasks sharing a node then fight for the
    same cores: 24 trials in two 1-CPU tasks on this project's 2-core machine took 184 s, against 55 s at
    one thread a task. The thread count is a trial's `sweeplab.torch_threads` tag, not part of its identity.
    """
    if "OMP_NUM_THREADS" in environ:
        return None
    cpus = environ.get("SLURM_CPUS_PER_TASK", "")
    return int(cpus) if cpus.isdigit() and int(cpus) > 0 else None


# What to change when sbatch refuses the request: (a word of its reason, the hint); the last is the fallback.
SBATCH_HINTS = (
    ("gres", "a cluster without GPUs takes hydra.launcher.gpus_per_task=null (or set a count its nodes have)"),
    ("memory", "lower hydra.launcher.mem_gb to what a node has (sinfo -o '%N %m' lists MB per node)"),
    ("partition", "set hydra.launcher.partition to one that sinfo lists"),
    ("time limit", "lower hydra.launcher.timeout_min to the partition's limit"),
    ("cpu", "lower hydra.launcher.cpus_per_task to what a node has"),
    ("", "check the hydra.launcher.* keys (gpus_per_task, mem_gb, cpus_per_task, partition, timeout_min)"),
)


def chunk_jobs(jobs: List[ComposedJob], trials_per_task: Optional[int], parallelism: int) -> List[List[ComposedJob]]:
    """Cut the sweep, ordered by model, into tasks: `trials_per_task` each, or (null) as many as run at once."""
    from sweeplab.sweep import raw_cost_key

    ordered = sorted(jobs, key=raw_cost_key)
    size = trials_per_task or max(1, math.ceil(len(jobs) / max(1, parallelism)))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]
