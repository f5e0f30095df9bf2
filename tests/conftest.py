"""Shared test plumbing: the reliability tests' figures, printed at the end of the run."""

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
