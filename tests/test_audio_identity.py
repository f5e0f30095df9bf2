"""A store remembers which audio each clip's values were made from: a clip whose audio changed
since (other file, other bytes, or, without hashing, another size or modification time) is named
and extracted again, and only that clip; a killed update resumes to the same store."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zarr

import pipeline.teachers
from pipeline.cli import main
from pipeline.data.manifest import Manifest, make_manifest
from pipeline.extract.audio_identity import NAMED_CLIPS, changed_line
from pipeline.extract.local import ExtractSummary, extract
from pipeline.paths import store_path
from pipeline.stores import ClipStore, markers, read_store
from pipeline.teachers import Teacher

SR = 8000
SECONDS = (2.0, 1.2, 3.0, 2.5, 1.0)


class FrameMeans(Teacher):
    """Mean and RMS of each 0.5 s frame, clip by clip; remembers every clip it was given by its
    length and first sample."""

    name = "frame-means"
    sample_rate_hz = SR
    hop_s = 0.5
    dim = 2
    min_duration_s = 0.1
    output_version = 1

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def num_frames(self, n_samples: int) -> int:
        return n_samples // 4000

    def embed(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        self.seen += [(len(w), float(w[0])) for w in waveforms]
        out = []
        for w in waveforms:
            frames = w[: self.num_frames(len(w)) * 4000].reshape(-1, 4000)
            out.append(np.stack([frames.mean(1), np.sqrt((frames**2).mean(1))], 1))
        return out


def _write(path: Path, seconds: float, seed: int) -> Path:
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * SR)).astype(np.float32)
    sf.write(path, audio, SR)
    return path


def _manifest(paths: list[Path]) -> Manifest:
    n = len(paths)
    return make_manifest(
        "toy",
        clip_ids=[f"c{i}" for i in range(n)],
        paths=paths,
        splits=["train"] * n,
        classes=["a"],
        labels=np.zeros((n, 1)),
    )


@pytest.fixture
def clips(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "audio"
    folder.mkdir()
    return [_write(folder / f"{i}.wav", s, seed=i) for i, s in enumerate(SECONDS)]


def _run(
    manifest: Manifest, out: Path, teacher: Teacher, **options
) -> tuple[ExtractSummary, list[str]]:
    lines: list[str] = []
    summary = extract(
        manifest,
        teacher,
        out,
        batch_size=2,
        shard_size=2,
        jobs=1,
        progress=False,
        say=lines.append,
        **options,
    )
    return summary, lines


def _values(store: Path) -> dict[str, np.ndarray]:
    reader = read_store(store)
    return {clip: reader.read(clip) for clip in reader.clip_ids}


def _assert_same_store(got: Path, want: Path) -> None:
    a, b = _values(got), _values(want)
    assert a.keys() == b.keys()
    for clip in a:
        np.testing.assert_array_equal(a[clip], b[clip], err_msg=clip)
    assert read_store(got).failures() == read_store(want).failures()


def _assert_clean_zarr(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(path, mode="r")
        for member in dict(group.members(max_depth=None)).values():
            if isinstance(member, zarr.Array):
                member[...]


def _bump_mtime(path: Path, seconds: int = 5) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


def test_replaced_audio_is_named_and_only_that_clip_is_embedded_again(tmp_path, clips):
    manifest = _manifest(clips)
    teacher = FrameMeans()
    _run(manifest, tmp_path / "s.zarr", teacher)
    _write(clips[1], 2.0, seed=99)  # other audio under the same clip ID (and path)

    teacher.seen.clear()
    summary, lines = _run(manifest, tmp_path / "s.zarr", teacher)

    assert teacher.seen == [(int(2.0 * SR), pytest.approx(sf.read(clips[1])[0][0]))]
    assert summary.audio_changed == {"c1": "size, modification time"}
    assert lines == [changed_line(tmp_path / "s.zarr", {"c1": "size, modification time"})]
    assert "1 clip's audio changed" in lines[0] and "'c1' (size, modification time)" in lines[0]
    _run(manifest, tmp_path / "fresh.zarr", FrameMeans())
    _assert_same_store(tmp_path / "s.zarr", tmp_path / "fresh.zarr")
    _assert_clean_zarr(tmp_path / "s.zarr")


def test_an_unchanged_rerun_embeds_nothing_and_says_nothing(tmp_path, clips):
    manifest = _manifest(clips)
    teacher = FrameMeans()
    _run(manifest, tmp_path / "s.zarr", teacher)
    teacher.seen.clear()
    summary, lines = _run(manifest, tmp_path / "s.zarr", teacher)
    assert (teacher.seen, lines, summary.shards_written, summary.audio_changed) == ([], [], 0, {})


def test_a_manifest_rebuilt_pointing_a_clip_at_another_file(tmp_path, clips):
    _run(_manifest(clips), tmp_path / "s.zarr", FrameMeans())
    other = shutil.copy(clips[0], tmp_path / "elsewhere.wav")
    rebuilt = _manifest([*clips[:3], Path(other), clips[4]])

    teacher = FrameMeans()
    summary, lines = _run(rebuilt, tmp_path / "s.zarr", teacher)

    assert len(teacher.seen) == 1 and summary.audio_changed.keys() == {"c3"}
    assert summary.audio_changed["c3"].startswith("path") and "'c3' (path" in lines[0]
    values = _values(tmp_path / "s.zarr")
    np.testing.assert_array_equal(values["c3"], values["c0"])


def test_a_touched_file_is_extracted_again_without_hashing(tmp_path, clips):
    manifest = _manifest(clips)
    teacher = FrameMeans()
    _run(manifest, tmp_path / "s.zarr", teacher)
    _bump_mtime(clips[2])
    teacher.seen.clear()
    summary, lines = _run(manifest, tmp_path / "s.zarr", teacher)
    assert len(teacher.seen) == 1 and summary.audio_changed == {"c2": "modification time"}
    assert len(lines) == 1


def test_with_hashing_the_content_decides(tmp_path, clips):
    manifest = _manifest(clips)
    teacher = FrameMeans()
    _run(manifest, tmp_path / "s.zarr", teacher, hash_audio=True)
    _bump_mtime(clips[2])  # touched: same bytes

    teacher.seen.clear()
    _, lines = _run(manifest, tmp_path / "s.zarr", teacher, hash_audio=True)
    assert (teacher.seen, lines) == ([], [])
    # The record was brought up to date: a run without hashing finds nothing changed either.
    _, lines = _run(manifest, tmp_path / "s.zarr", teacher)
    assert (teacher.seen, lines) == ([], [])

    mtime = clips[4].stat().st_mtime_ns
    _write(clips[4], SECONDS[4], seed=42)  # other bytes, same size and modification time
    os.utime(clips[4], ns=(mtime, mtime))
    summary, lines = _run(manifest, tmp_path / "s.zarr", teacher, hash_audio=True)
    assert len(teacher.seen) == 1 and summary.audio_changed == {"c4": "content"}
    assert "'c4' (content)" in lines[0]


def test_a_missing_file_keeps_the_values_and_a_broken_one_fails(tmp_path, clips):
    manifest = _manifest(clips)
    teacher = FrameMeans()
    _run(manifest, tmp_path / "s.zarr", teacher)
    before = _values(tmp_path / "s.zarr")

    clips[1].unlink()
    teacher.seen.clear()
    _, lines = _run(manifest, tmp_path / "s.zarr", teacher)
    assert teacher.seen == [] and lines == [
        f"{tmp_path / 's.zarr'}: 1 clip's audio file is missing ('c1'): "
        "their stored values are kept"
    ]
    np.testing.assert_array_equal(read_store(tmp_path / "s.zarr").read("c1"), before["c1"])

    clips[1].write_bytes(b"not audio at all")
    summary, _ = _run(manifest, tmp_path / "s.zarr", teacher, max_failed_fraction=0.5)
    assert teacher.seen == [] and set(summary.failed) == {"c1"}
    assert read_store(tmp_path / "s.zarr").n_frames[1] == 0
    np.testing.assert_array_equal(read_store(tmp_path / "s.zarr").read("c0"), before["c0"])


def test_stores_without_records_are_trusted(tmp_path, clips):
    manifest = _manifest(clips)
    _run(manifest, tmp_path / "s.zarr", FrameMeans())
    for shard, marker in markers.shard_markers(tmp_path / "s.zarr").items():
        del marker["audio"]  # as written before identities were recorded
        markers.write_shard_marker(tmp_path / "s.zarr", shard, marker)
    _write(clips[1], 2.0, seed=99)
    teacher = FrameMeans()
    _, lines = _run(manifest, tmp_path / "s.zarr", teacher)
    assert (teacher.seen, lines) == ([], [])


def test_many_changed_clips_are_counted_after_a_few(tmp_path):
    changed = {f"c{i}": "size" for i in range(NAMED_CLIPS + 3)}
    line = changed_line("s.zarr", changed)
    assert line.startswith(f"s.zarr: {len(changed)} clips' audio changed since they were")
    assert f"'c{NAMED_CLIPS - 1}' (size) … and 3 more" in line


@pytest.mark.parametrize("killed", ["writing-values", "writing-marker"])
def test_a_killed_update_resumes_to_the_same_store(tmp_path, clips, monkeypatch, killed):
    manifest = _manifest(clips)
    _run(manifest, tmp_path / "s.zarr", FrameMeans())
    _write(clips[1], 2.0, seed=99)
    _write(clips[4], 1.5, seed=98)

    class Killed(BaseException):
        """A kill: no handler of the extraction catches it."""

    def die(*args, **kwargs):
        raise Killed

    if killed == "writing-values":
        monkeypatch.setattr(ClipStore, "write_shard", die)
    else:  # the first changed shard is rewritten, the second one's values but not its marker
        write_marker, calls = markers.write_shard_marker, iter(range(100))

        def die_on_second(store, shard, marker):
            if next(calls):
                die()
            write_marker(store, shard, marker)

        monkeypatch.setattr(markers, "write_shard_marker", die_on_second)
    with pytest.raises(Killed):
        _run(manifest, tmp_path / "s.zarr", FrameMeans())
    monkeypatch.undo()
    assert not markers.is_complete(tmp_path / "s.zarr")
    _assert_clean_zarr(tmp_path / "s.zarr")

    summary, _ = _run(manifest, tmp_path / "s.zarr", FrameMeans())
    assert markers.is_complete(tmp_path / "s.zarr") and "c4" in summary.audio_changed
    _run(manifest, tmp_path / "fresh.zarr", FrameMeans())
    _assert_same_store(tmp_path / "s.zarr", tmp_path / "fresh.zarr")
    _assert_clean_zarr(tmp_path / "s.zarr")


def test_the_records_are_the_audio_embedded(tmp_path, clips):
    _run(_manifest(clips), tmp_path / "s.zarr", FrameMeans(), hash_audio=True)
    record = markers.shard_markers(tmp_path / "s.zarr")[0]["audio"]["c1"]
    stat = clips[1].stat()
    assert record["path"] == os.path.realpath(clips[1])
    assert (record["size"], record["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    assert len(record["sha256"]) == 64
    attributes = json.loads((tmp_path / "s.zarr/progress/shard-000000/zarr.json").read_text())
    assert attributes["node_type"] == "group"


def _csv_dataset(root: Path) -> tuple[Path, Path]:
    """The clips of :data:`SECONDS` as ``root/audio/c<i>.wav`` and a CSV naming them."""
    folder = root / "audio"
    folder.mkdir()
    for i, seconds in enumerate(SECONDS):
        _write(folder / f"c{i}.wav", seconds, seed=i)
    table = root / "clips.csv"
    table.write_text(
        "clip_id,path,split,a\n"
        + "".join(f"c{i},{folder}/c{i}.wav,train,0\n" for i in range(len(SECONDS)))
    )
    return folder, table


def test_a_rebuilt_dataset_through_the_command_line(tmp_path, monkeypatch, capsys):
    """``make data`` then ``make extract``: the manifest rebuilt, extract --replace-stale."""
    folder, table = _csv_dataset(tmp_path)
    data = ["--data-dir", str(tmp_path / "data")]
    teacher = FrameMeans()
    monkeypatch.setattr(pipeline.teachers, "create_teacher", lambda *a, **k: teacher)
    extract_argv = [*data, "extract", "toy", "musicnn", "--replace-stale", "--jobs", "1", "-q"]
    assert main([*data, "data", "toy", "--csv", str(table)]) == 0
    assert main([*extract_argv, "--hash-audio"]) == 0

    _write(folder / "c3.wav", 1.5, seed=7)
    assert main([*data, "data", "toy", "--csv", str(table)]) == 0
    capsys.readouterr()
    teacher.seen.clear()
    assert main([*extract_argv, "--hash-audio"]) == 0
    out = capsys.readouterr().out
    store = store_path(tmp_path / "data", "toy", "musicnn")
    assert f"{store}: 1 clip's audio changed since it was extracted ('c3' (size, " in out
    assert len(teacher.seen) == 1 and markers.is_complete(store)


def test_a_training_recomputes_the_mels_of_changed_clips(tmp_path, clips):
    """``make train`` on a complete mel store: the clips whose audio changed are computed again."""
    from pipeline.extract.mels import ensure_mel_store
    from pipeline.paths import manifest_path, mel_store_name

    data = tmp_path / "data"
    _manifest(clips).write(manifest_path(data, "toy"))
    lines: list[str] = []
    assert main(["--data-dir", str(data), "mels", "toy", "--jobs", "1", "-q"]) == 0
    assert ensure_mel_store(data, "toy", "cp_resnet", progress=False, say=lines.append) is None

    _bump_mtime(clips[0])
    summary = ensure_mel_store(data, "toy", "cp_resnet", progress=False, say=lines.append)
    store = store_path(data, "toy", mel_store_name("cp_resnet"))
    assert summary is not None and summary.audio_changed == {"c0": "modification time"}
    assert lines[0] == changed_line(store, {"c0": "modification time"})
    assert summary.processed == 1 and markers.is_complete(store)


def test_a_failed_clip_whose_audio_was_fixed_is_extracted_again(tmp_path, clips):
    clips[3].write_bytes(b"not audio at all")
    manifest = _manifest(clips)
    summary, _ = _run(manifest, tmp_path / "s.zarr", FrameMeans(), max_failed_fraction=0.5)
    assert set(summary.failed) == {"c3"}

    _write(clips[3], SECONDS[3], seed=3)
    summary, _ = _run(manifest, tmp_path / "s.zarr", FrameMeans())
    assert summary.failed == {} and summary.embedded == len(SECONDS)
    _run(manifest, tmp_path / "fresh.zarr", FrameMeans())
    _assert_same_store(tmp_path / "s.zarr", tmp_path / "fresh.zarr")


def test_with_hashing_a_copied_dataset_is_not_extracted_again(tmp_path, clips):
    _run(_manifest(clips), tmp_path / "s.zarr", FrameMeans(), hash_audio=True)
    copied = shutil.copytree(clips[0].parent, tmp_path / "copy")  # new paths and times
    manifest = _manifest([copied / p.name for p in clips])
    teacher = FrameMeans()
    _, lines = _run(manifest, tmp_path / "s.zarr", teacher, hash_audio=True)
    assert (teacher.seen, lines) == ([], [])
    _, lines = _run(manifest, tmp_path / "s.zarr", teacher)  # the records now name the copies
    assert (teacher.seen, lines) == ([], [])


def test_a_clip_replaced_by_a_longer_one_gives_the_store_more_room(tmp_path, monkeypatch, capsys):
    """The replaced clip is now the longest: the store's rows are too short for it, so the
    store is laid out again and extracted afresh, saying why (not "another layout", exit 2)."""
    folder, table = _csv_dataset(tmp_path)
    data = ["--data-dir", str(tmp_path / "data")]
    monkeypatch.setattr(pipeline.teachers, "create_teacher", lambda *a, **k: FrameMeans())
    extract_argv = [*data, "extract", "toy", "musicnn", "--replace-stale", "--jobs", "1", "-q"]
    assert main([*data, "data", "toy", "--csv", str(table)]) == 0
    assert main(extract_argv) == 0

    _write(folder / "c1.wav", 4.5, seed=9)  # longer than the longest (3 s, 6 frames)
    assert main([*data, "data", "toy", "--csv", str(table)]) == 0
    capsys.readouterr()
    assert main(extract_argv) == 0
    out = capsys.readouterr().out
    assert "laid out for clips of up to 6 frames, and the manifest's longest clip now has 9" in out
    store = read_store(store_path(tmp_path / "data", "toy", "musicnn"))
    assert store.max_frames == 9 and store.read("c1").shape == (9, 2)

    _run(_manifest([folder / f"c{i}.wav" for i in range(5)]), tmp_path / "f.zarr", FrameMeans())
    for i in range(5):
        np.testing.assert_array_equal(
            store.read(f"c{i}"), read_store(tmp_path / "f.zarr").read(f"c{i}")
        )


def test_results_computed_from_a_store_see_new_audio_of_the_same_length(tmp_path, clips):
    """Probes are cached by the store's content version: clips extracted again from other audio
    of the same length (same fingerprint, same frame counts) give another version."""
    from pipeline.stores.status import content_version

    manifest = _manifest(clips)
    _run(manifest, tmp_path / "s.zarr", FrameMeans())
    before = content_version(read_store(tmp_path / "s.zarr"))
    _run(manifest, tmp_path / "s.zarr", FrameMeans())
    assert content_version(read_store(tmp_path / "s.zarr")) == before, "nothing changed"

    _write(clips[1], SECONDS[1], seed=99)
    summary, _ = _run(manifest, tmp_path / "s.zarr", FrameMeans())
    store = read_store(tmp_path / "s.zarr")
    assert list(summary.audio_changed) == ["c1"] and store.n_frames[1] == 2
    assert content_version(store) != before


def test_a_finished_run_says_its_store_changed_since(tmp_path, clips):
    """A student trained before its store's clips were extracted again keeps its name (same
    fingerprints): training says the store changed instead of silently reusing the run."""
    from types import SimpleNamespace

    from pipeline.train.checkpoints import changed_stores, write_run_files

    manifest = _manifest(clips)
    store = tmp_path / "s.zarr"
    _run(manifest, store, FrameMeans())
    data = SimpleNamespace(mel_path=store, teacher_paths=[], train_set=SimpleNamespace(skipped={}))
    write_run_files(tmp_path / "run", {}, data)
    assert changed_stores(tmp_path / "run") == []

    _write(clips[2], SECONDS[2], seed=42)
    _run(manifest, store, FrameMeans())
    assert changed_stores(tmp_path / "run") == ["s.zarr"]
