"""R4: weights, teacher options, mel front end or clips changed after a store was made: the
stale store is refused naming the difference, or made again from scratch saying why; never
mixed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from command_line import run_cli
from harness import FAST_CLIPS, STORE_ARGS, Corpus, extract_args

from pipeline.data.manifest import Manifest
from pipeline.stores import read_store


def snapshot(store: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in store.rglob("*")
        if p.is_file()
    }


def test_r4_replaced_teacher_weights_are_refused(corpora, tmp_path, reliability_figures):
    """The same teacher and options with another weights file: refused, naming the sha256."""
    from pipeline.teachers import file_sha256
    from pipeline.teachers.musicnn import default_weights_dir

    corpus = corpora(FAST_CLIPS)
    store = corpus.store("swapped")
    shutil.copytree(corpus.reference, store)
    before = snapshot(store)
    # A checkpoint folder given with --weights whose bytes are not the ones the store was made
    # with: the MSD-trained musicnn weights in the place of the MTT ones (same network shape).
    weights = tmp_path / "MTT_musicnn"
    shutil.copytree(default_weights_dir("MSD_musicnn"), weights)
    old = read_store(store).fingerprint["weights_sha256"]
    new = file_sha256(weights / ".data-00000-of-00001")
    assert old != new
    out = run_cli(
        corpus.data,
        *extract_args(corpus.dataset, "swapped", "--weights", str(weights)),
        expect=2,
    )
    assert out.stderr.startswith(f"error: {store} was made with other settings")
    assert f"weights_sha256: {old!r} → {new!r}" in out.stderr and out.stderr.count("\n") == 1
    assert snapshot(store) == before, "the refused run touched the store"
    reliability_figures.append("R4 weights file replaced: refused naming weights_sha256")


def test_r4_changed_teacher_option_is_extracted_afresh_not_mixed(corpora, reliability_figures):
    """--replace-stale (what `make extract` passes) with another teacher option: the store is
    made again from scratch, saying which setting changed; no shard of the old one survives."""
    corpus = corpora(FAST_CLIPS)
    store = corpus.store("relayered")
    shutil.copytree(corpus.reference, store)
    # (Without --replace-stale it is refused: tests/test_stage_one.py.)
    args = extract_args(corpus.dataset, "relayered", "-o", "layer=mean_pool")
    out = run_cli(corpus.data, *args, "--replace-stale", expect=1)
    assert f"{store} was made with other settings: layer: 'max_pool' → 'mean_pool'" in out.stdout
    assert f"{corpus.shards} shards written, 0 already done" in out.stdout
    new, old = read_store(store), read_store(corpus.reference)
    assert new.fingerprint == {**old.fingerprint, "layer": "mean_pool"}
    np.testing.assert_array_equal(new.n_frames, old.n_frames)
    for clip in (c for c, n in zip(old.clip_ids, old.n_frames, strict=True) if n):
        assert not np.array_equal(new.read(clip), old.read(clip)), clip
    reliability_figures.append(
        "R4 teacher option changed (layer): --replace-stale made every shard afresh, naming it"
    )


def _set_fingerprint(store: Path, **changes) -> dict:
    group = zarr.open_group(store, mode="r+")
    fingerprint = {**group.attrs["fingerprint"], **changes}
    group.attrs["fingerprint"] = fingerprint
    return fingerprint


TRAIN_SETTINGS = ["student=mobile_fcn", "frontend=mobile_fcn", "teacher=none", "max_epochs=1"]
TRAIN_SETTINGS += ["batch_size=4", "--workers", "0", "-q"]


def _stale_mel_store(corpus: Corpus) -> tuple[Path, list[str], dict]:
    """The corpus's mobile_fcn mel store, made and then marked as made with pre-emphasis 0.9
    (as if the front end's code had changed since); its command and its true fingerprint."""
    mel = corpus.data / "cache" / corpus.dataset / "mel-mobile_fcn.zarr"
    mels = ["mels", corpus.dataset, "--frontend", "mobile_fcn", *STORE_ARGS]
    run_cli(corpus.data, *mels, "--overwrite", expect=1)  # the corpus's two broken clips fail
    current = read_store(mel).fingerprint
    _set_fingerprint(mel, preemphasis=0.9)
    return mel, mels, current


def test_r4_changed_mel_front_end_is_refused(corpora, reliability_figures):
    """A mel store whose front-end settings differ from the code's: `mels` refuses it, naming
    the setting, and leaves it as it is."""
    mel, mels, _ = _stale_mel_store(corpora(FAST_CLIPS))
    before = snapshot(mel)
    refused = run_cli(mel.parents[2], *mels, expect=2)
    assert "made with other settings (preemphasis: 0.9 → 0.97)" in refused.stderr
    assert snapshot(mel) == before
    reliability_figures.append("R4 mel front end changed: `mels` refused naming preemphasis")


@pytest.mark.torture
def test_r4_torture_training_rebuilds_a_stale_mel_store_saying_why(corpora):
    """`train` makes its mel store itself: a stale one is computed again from scratch, and the
    message names the setting that changed."""
    corpus = corpora(FAST_CLIPS)
    mel, _, current = _stale_mel_store(corpus)
    out = run_cli(corpus.data, "train", corpus.dataset, *TRAIN_SETTINGS)
    assert f"{mel} was made with other settings: preemphasis: 0.9 → 0.97: computing it again" in (
        out.stdout
    )
    assert "1 shards written, 0 already done" in out.stdout  # made afresh, one 256-clip shard
    assert read_store(mel).fingerprint == current
    runs = list((corpus.data / "runs" / corpus.dataset).iterdir())
    stores = json.loads((runs[0] / "stores.json").read_text())
    assert stores[str(mel)]["fingerprint"] == current


def _changed_dataset(corpus: Corpus, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Dataset "changed": the corpus less its first two clips plus one new one, with the
    corpus's teacher store copied in as its musicnn store (made before the dataset changed)."""
    source = corpus.manifest.clips
    rows = source.iloc[2:].copy()  # two clips gone
    extra = source.iloc[[0]].assign(clip_id="added-later")  # one new clip
    changed = pd.concat([rows, extra])
    labels = {c: changed[c].astype("string").fillna("") for c in corpus.manifest.classes}
    csv = tmp_path / "changed.csv"
    pd.DataFrame(
        {
            "clip_id": changed["clip_id"],
            "path": changed["path"],
            "split": changed["split"],
            **labels,
        }
    ).to_csv(csv, index=False)
    run_cli(corpus.data, "data", "changed", "--csv", str(csv))
    teacher = corpus.data / "cache" / "changed" / "musicnn.zarr"
    teacher.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(teacher, ignore_errors=True)
    shutil.copytree(corpus.reference, teacher)
    return teacher, source


def test_r4_teacher_store_of_other_clips_is_refused_by_training(
    corpora, tmp_path, reliability_figures
):
    """A teacher store extracted from another version of the dataset (clips added and removed
    since): training refuses it, naming the clips, instead of training on the overlap."""
    corpus = corpora(FAST_CLIPS)
    teacher, source = _changed_dataset(corpus, tmp_path)
    settings = [s.replace("teacher=none", "teacher=musicnn") for s in TRAIN_SETTINGS]
    out = run_cli(corpus.data, "train", "changed", *settings, expect=2)
    gone = ", ".join(repr(c) for c in source["clip_id"].iloc[:2])
    assert out.stderr.startswith(f"error: {teacher} was made for other clips than ")
    assert "1 clips of the manifest are not in it ('added-later')" in out.stderr
    assert f"2 of its clips are not in the manifest ({gone})" in out.stderr
    assert not (corpus.data / "runs" / "changed").exists()
    reliability_figures.append("R4 dataset changed under a teacher store: training refused")


@pytest.mark.torture
def test_r4_torture_replace_stale_replaces_a_store_of_other_clips(corpora, tmp_path):
    """`make extract` (--replace-stale) replaces a store made for other clips, saying why."""
    corpus = corpora(FAST_CLIPS)
    teacher, _ = _changed_dataset(corpus, tmp_path)
    out = run_cli(corpus.data, *extract_args("changed", "musicnn", "--replace-stale"), expect=1)
    assert f"{teacher} was made for other clips than the manifest: 1 clips" in out.stdout
    assert (
        read_store(teacher).clip_ids
        == Manifest.read(corpus.data / "manifests" / "changed.parquet").clip_ids
    )
