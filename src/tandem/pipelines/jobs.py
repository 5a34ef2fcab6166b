"""Several runs of a study at once on one machine: ``tandem study --jobs N``.

On a CPU a small model's training step does not use two cores well: on the 2-core EPYC of docs/benchmarks.md the
conflict study's SFT stage (SmolLM2 + LoRA, bf16) trained 223 tokens/s with both threads, and two runs side by side
with one thread each trained 211 and 213 tokens/s: 1.9x the work (docs/benchmarks.md, "Several runs at once"). Each job is a
process of its own (``spawn``: a fresh interpreter, no forked OpenMP state) that runs
:func:`tandem.pipelines.compare.run_one` for one (row, seed) with ``threads`` threads; the parent keeps the study's
lock and order, and collects the rows. A run is the same run as in a one-job study (its own directory, seeds and
checkpoints; ``--resume`` continues it either way); with the same number of threads its numbers are the same.

A job does not outlive the study: on Linux each job asks the kernel to kill it when its parent dies
(``PR_SET_PDEATHSIG``), so a study stopped with ``kill`` or ``kill -9`` leaves no run training on in the background, where
it would write into a run directory that a ``--resume`` is about to use (checkpoints are atomic, so the kill is safe).
Elsewhere a job checks that its parent is alive before it starts.

Progress bars are off in the jobs (several bars on one terminal garble each other); each job's log lines carry its
run's name, and the parent logs each run as it finishes. The first failure stops new jobs from starting; the
running ones finish (their runs stay resumable) and the failure is raised.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

__all__ = ["default_threads", "die_with_parent", "run_parallel", "run_row"]

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads(jobs: int) -> int:
    """This process's usable cores shared out over ``jobs`` (at least one thread each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform (macOS, Windows)
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent exits (Linux); exit now if the parent ``parent`` is gone."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the call above
        os._exit(1)


def _init(threads: int, parent: int) -> None:
    die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)


def run_row(name: str, path: Path, seed: int, run_dir: Path, overrides: list[str], resume: bool,
            fork: tuple[str, str] | None = None) -> tuple[dict, float]:
    """One (row, seed) of a study, trained (or reused, resumed, or forked: ``tandem study --fork-from``) and scored:
    its table row and its seconds."""
    from tandem.pipelines.compare import run_one

    t0 = time.perf_counter()
    row = run_one(path, None, seed, run_dir, overrides, resume, name=name, sweep=True, reuse_eval=resume, fork=fork)
    row["recipe"] = str(path)
    return row, time.perf_counter() - t0


def _one(name: str, path: str, seed: int, run_dir: str, overrides: list[str], resume: bool,
         fork: tuple[str, str] | None) -> tuple[dict, float]:
    """:func:`run_row` in a job process: log lines named after the run, no progress bar."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{name}-s{seed}] %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("tandem")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return run_row(name, Path(path), seed, Path(run_dir), [*overrides, "logging.progress=false"], resume, fork)


def run_parallel(plan: list[tuple[str, Path, int]], out_dir: Path, overrides: list[str], resume: bool, jobs: int,
                 threads: int | None = None, on_row=None, fork: tuple[str, str] | None = None) -> list[dict]:
    """The rows of ``plan`` (``(name, recipe path, seed)``), in plan order, run ``jobs`` at a time with ``threads``
    threads each (default :func:`default_threads`); ``on_row(done_rows, row, seconds)`` after each finished run;
    ``fork``: as :func:`run_row`'s."""
    threads = threads or default_threads(jobs)
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: str(threads) for k in THREAD_VARS})  # the jobs' OpenMP pools start with this many threads
    rows: dict[int, dict] = {}
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init,
                                 initargs=(threads, os.getpid())) as pool:
            pending = list(enumerate(plan))
            running: dict[Future, int] = {}
            failure: BaseException | None = None
            while pending or running:
                while pending and len(running) < jobs and failure is None:
                    i, (name, path, seed) = pending.pop(0)
                    running[pool.submit(_one, name, str(path), seed, str(out_dir / f"{name}-s{seed}"), list(overrides),
                                        resume, fork)] = i
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    try:
                        row, seconds = fut.result()
                    except BaseException as e:  # noqa: BLE001 - re-raised once the running jobs have finished
                        failure = failure or e
                        continue
                    rows[i] = row
                    if on_row is not None:
                        on_row([rows[j] for j in sorted(rows)], row, seconds)
            if failure is not None:
                raise failure
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return [rows[i] for i in sorted(rows)]
