"""Every encoder's outputs on fixed audio with fixed weights equal its golden file.

A change to the values an encoder computes must raise its ``output_version`` (which makes the
stores it wrote stale); these tests fail until it is. See ``tests/golden.py``.
"""

from __future__ import annotations

import pytest
from golden import ENCODERS, build_encoder, golden_problems, update_requested, write_golden


@pytest.mark.parametrize("name", ENCODERS)
def test_outputs_equal_the_golden_file(name, tmp_path_factory):
    encoder = build_encoder(name, tmp_path_factory.mktemp("weights"))
    if update_requested():
        write_golden(name, encoder)
    assert golden_problems(name, encoder) == []
