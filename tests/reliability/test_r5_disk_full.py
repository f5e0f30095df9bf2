"""R5: a write fails with ENOSPC in the middle of a shard: a one-line error naming the store
and the shard; that shard is not marked done, the earlier ones keep their values; the rerun
completes the store."""

from __future__ import annotations

import numpy as np
import pytest
from command_line import run_cli
from harness import FAST_CLIPS, Corpus, assert_same_store, done_shards, extract_args, run_with_fault

from pipeline.stores import markers, read_store


def _disk_full(corpus: Corpus, what: str, target: int) -> str:
    name = f"full-{what}"
    store = corpus.store(name)
    args = extract_args(corpus.dataset, name)
    failed = run_with_fault(corpus.data, "enospc", what, target, args)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    message = failed.stderr.strip()
    assert message.startswith(f"error: {store}: writing ") and "\n" not in message
    assert "No space left on device" in message
    assert done_shards(store) == list(range(target)), "the failed shard was marked done"
    assert not markers.is_complete(store)
    partial, reference = read_store(store, require_complete=False), read_store(corpus.reference)
    rows = range(2 * target)  # shards 0 .. target-1 keep their values
    np.testing.assert_array_equal(partial.n_frames[rows], reference.n_frames[rows])
    ids = [partial.clip_ids[r] for r in rows]
    for a, b, clip in zip(partial.read_batch(ids), reference.read_batch(ids), ids, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=clip)

    out = run_cli(corpus.data, *args, expect=1)
    assert f"{target} already done" in out.stdout
    assert_same_store(store, corpus.reference, corpus.manifest)
    return (
        f"R5 ENOSPC while writing shard {target}'s {what}: not marked done, earlier shards "
        "kept, rerun identical to the uninterrupted store"
    )


def test_r5_disk_full_in_a_shard_leaves_it_undone_and_the_rerun_completes(
    corpora, reliability_figures
):
    reliability_figures.append(_disk_full(corpora(FAST_CLIPS), "data", 3))


@pytest.mark.torture
@pytest.mark.parametrize("what", ["n_frames", "marker"])
def test_r5_torture_disk_full_at_other_writes(corpora, what, reliability_figures):
    reliability_figures.append(_disk_full(corpora(FAST_CLIPS), what, 2))


@pytest.mark.torture
def test_r5_disk_full_message_names_the_shard(corpora):
    corpus = corpora(FAST_CLIPS)
    args = extract_args(corpus.dataset, "full-named")
    failed = run_with_fault(corpus.data, "enospc", "data", 1, args)
    assert "shard 1" in failed.stderr, failed.stderr
