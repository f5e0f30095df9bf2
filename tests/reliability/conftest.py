"""Fixtures of the reliability tests (see harness.py for what each R-number requires)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import Corpus, build_corpus


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> Callable[[int], Corpus]:
    """Corpus of ``n`` demo clips (+ 2 failing ones), built on first use and shared by the
    R1, R4 and R5 tests (each writes stores and datasets of its own names into it)."""
    built: dict[int, Corpus] = {}

    def get(n: int) -> Corpus:
        if n not in built:
            built[n] = build_corpus(tmp_path_factory.mktemp(f"corpus{n}"), n)
        return built[n]

    return get
