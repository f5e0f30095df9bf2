"""The command line as the end-to-end tests run it: ``python -m pipeline`` in a subprocess, and
data folders that share another's manifests and stores.

Plain functions (not fixtures), so that module- and session-scoped fixtures can use them too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

# Columns of a run's metrics.csv that vary from run to run (wall time), whatever the seed.
TIMING_COLUMNS = ["seconds", "clips_per_s"]


def pipeline_command(data_dir: Path, *args: str) -> list[str]:
    """The argument list of ``python -m pipeline --data-dir DATA_DIR ARGS...``."""
    return [sys.executable, "-m", "pipeline", "--data-dir", str(data_dir), *args]


def run_cli(
    data_dir: Path,
    *args: str,
    expect: int | None = 0,
    timeout: float = 900,
    **options: Any,
) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline --data-dir DATA_DIR ARGS...`` and check its exit status.

    Parameters
    ----------
    data_dir : the ``--data-dir`` folder
    args : the stage and its arguments
    expect : the exit status it must end with; ``None``: any
    timeout : seconds before the run is stopped (and the test fails)
    options : further ``subprocess.run`` options (``cwd``, ``env``, ``preexec_fn`` ...)

    Returns
    -------
    subprocess.CompletedProcess -- with ``stdout`` and ``stderr`` as text
    """
    result = subprocess.run(
        pipeline_command(data_dir, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )
    if expect is not None and result.returncode != expect:
        raise AssertionError(
            f"pipeline {' '.join(args)}: exit status {result.returncode}, expected {expect}\n"
            f"--- stdout\n{result.stdout[-8000:]}\n--- stderr\n{result.stderr[-8000:]}"
        )
    return result


def sibling_data_dir(data_dir: Path, folder: Path) -> Path:
    """``folder`` (created) as a data folder sharing ``data_dir``'s manifests, stores and
    datasets through symbolic links, but with runs of its own."""
    folder.mkdir()
    for name in ("manifests", "cache", "datasets"):
        (folder / name).symlink_to(data_dir / name)
    return folder


def run_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's ``metrics.csv`` without its timing columns: what two runs of one seed share."""
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING_COLUMNS)
