"""The failure limit of stage one (``--max-failed``): a store with too many failed clips is held
back from completion, and says why at the end of the run and whenever it is opened later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import pipeline.teachers
from pipeline.cli import main
from pipeline.cli_parser import build_parser
from pipeline.extract.local import MAX_FAILED_FRACTION, check_failure_limit
from pipeline.paths import store_path
from pipeline.stores import StoreError, markers, read_store
from pipeline.stores.status import failures_path
from pipeline.teachers import Teacher

CLIPS, BROKEN = 18, 5  # 5 of 18 is 28 %: over the default limit of 20 %, under 50 %


class Means(Teacher):
    """The mean of each 0.5 s frame; refuses clips whose first sample is exactly 0.25."""

    name = "means"
    sample_rate_hz = 8000
    hop_s = 0.5
    dim = 1
    min_duration_s = 0.1
    output_version = 1

    def num_frames(self, n_samples: int) -> int:
        return n_samples // 4000

    def embed(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        if any(w[0] == np.float32(0.25) for w in waveforms):
            raise RuntimeError("unsupported waveform")
        return [
            w[: self.num_frames(len(w)) * 4000].reshape(-1, 4000).mean(1, keepdims=True)
            for w in waveforms
        ]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with the manifest of ``mine``: 18 one-second clips, the first 5 of which
    the teacher (any name builds :class:`Means`) refuses."""
    rows = []
    for i in range(CLIPS):
        audio = np.random.default_rng(i).uniform(-0.5, 0.5, 8000).astype(np.float32)
        audio[0] = 0.25 if i < BROKEN else 0.0
        sf.write(tmp_path / f"c{i:02d}.wav", audio, 8000)
        rows.append(f"c{i:02d},c{i:02d}.wav,train,{i % 2}")
    table = tmp_path / "clips.csv"
    table.write_text("clip_id,path,split,piano\n" + "\n".join(rows) + "\n")
    assert main(["--data-dir", str(tmp_path / "data"), "data", "mine", "--csv", str(table)]) == 0
    monkeypatch.setattr(pipeline.teachers, "create_teacher", lambda *a, **k: Means())
    return tmp_path / "data"


def _extract(data_dir: Path, capsys: pytest.CaptureFixture, *options: str) -> tuple[int, Any]:
    capsys.readouterr()
    argv = ["--data-dir", str(data_dir), "extract", "mine", "musicnn", "--jobs", "1", "-q"]
    status = main([*argv, *options])
    return status, capsys.readouterr()


def test_over_the_limit_exits_2_naming_counts_limit_table_and_option(data_dir, capsys):
    status, out = _extract(data_dir, capsys)
    store = store_path(data_dir, "mine", "musicnn")

    assert status == 2
    (line,) = out.err.splitlines()
    assert line.startswith("error: ") and f"{BROKEN} of {CLIPS} clips failed" in line
    assert "limit of 20 %" in line and "--max-failed FRACTION" in line
    assert str(failures_path(store)) in line and "MAX_FAILED=" in line
    assert len(failures_path(store).read_text().splitlines()) == 1 + BROKEN
    assert not markers.is_complete(store)


def test_reading_a_held_store_gives_the_same_reason(data_dir, capsys):
    _, out = _extract(data_dir, capsys)
    store = store_path(data_dir, "mine", "musicnn")
    reason = out.err.split(": ", 2)[-1].strip()

    with pytest.raises(StoreError) as refused:
        read_store(store)
    assert str(refused.value).endswith(reason)
    assert "interrupted" not in str(refused.value)


def test_interrupted_store_still_says_interrupted(data_dir, capsys):
    _extract(data_dir, capsys)
    store = store_path(data_dir, "mine", "musicnn")
    (store / markers.HELD / markers.ZARR_JSON).unlink()
    with pytest.raises(StoreError, match="interrupted"):
        read_store(store)


@pytest.mark.parametrize("held_first", [False, True], ids=["fresh", "after-a-held-run"])
def test_under_a_given_limit_the_store_is_complete_and_the_exit_status_1(
    data_dir, capsys, held_first
):
    if held_first:
        assert _extract(data_dir, capsys)[0] == 2
    status, out = _extract(data_dir, capsys, "--max-failed", "0.5")
    store = store_path(data_dir, "mine", "musicnn")

    assert status == 1, out.err
    assert f"{BROKEN} clips failed" in out.out
    assert markers.is_complete(store) and not (store / markers.HELD).exists()
    assert len(read_store(store).failures()) == BROKEN


@pytest.mark.parametrize("stage", [["extract", "mine", "musicnn"], ["mels", "mine"]])
@pytest.mark.parametrize("fraction", ["1.5", "-0.1", "nan", "half"])
def test_an_invalid_fraction_is_a_usage_error_on_one_line(tmp_path, capsys, stage, fraction):
    with pytest.raises(SystemExit) as exit_:
        main(["--data-dir", str(tmp_path), *stage, "--max-failed", fraction])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    (line,) = [line for line in err.splitlines() if "error: " in line]
    assert f"{fraction!r}: expected a fraction from 0 to 1" in line


def test_the_option_reaches_both_stages_with_the_default_limit():
    parser = build_parser()
    assert parser.parse_args(["mels", "mine"]).max_failed == MAX_FAILED_FRACTION == 0.2
    assert parser.parse_args(["mels", "mine", "--max-failed", "0"]).max_failed == 0.0
    args = parser.parse_args(["extract", "mine", "musicnn", "--max-failed", "1"])
    assert args.max_failed == 1.0
    with pytest.raises(ValueError, match="expected a fraction from 0 to 1"):
        check_failure_limit(1.01)
