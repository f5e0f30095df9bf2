"""Shared test plumbing: the reliability tests' figures, printed at the end of the run.

Shared helpers are plain modules beside this file, importable from every test (this folder is
on ``sys.path``): ``command_line`` runs ``python -m pipeline`` and makes sibling data folders;
``stand_ins`` writes a miniature OpenMIC release and random teacher weights in each package's
own checkpoint format. The reliability tests' own machinery is in ``reliability/harness.py``.
"""

from __future__ import annotations

import pytest

RELIABILITY_FIGURES = pytest.StashKey[list]()


@pytest.fixture
def reliability_figures(request) -> list[str]:
    """Lines a reliability test adds (kills landed, inputs tried, …) for the run's summary."""
    return request.config.stash.setdefault(RELIABILITY_FIGURES, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    lines = config.stash.get(RELIABILITY_FIGURES, [])
    if lines:
        terminalreporter.section("reliability figures")
        for line in lines:
            terminalreporter.write_line(line)
