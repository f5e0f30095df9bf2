"""R1: extraction SIGKILLed at random moments and at chosen points of a store write, then
resumed: the store equals an uninterrupted run's (arrays, n_frames, failures, fingerprint,
files), no clip is lost or doubled, no temporary file is left; no process outlives a kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from command_line import pipeline_command, run_cli
from harness import (
    ENGINE_ARGS,
    ENGINES,
    FAST_CLIPS,
    SEED,
    TORTURE_CLIPS,
    Corpus,
    assert_same_store,
    done_shards,
    extract_args,
    kill_figures,
    kill_repeatedly,
    run_with_fault,
    session_processes,
)

from pipeline.stores import markers


def _r1(
    corpus: Corpus,
    tmp_path: Path,
    engine: str,
    kills: int,
    seed_offset: int,
    jobs: int = 1,
    orphans: list[int] | None = None,
) -> str:
    name = f"killed-{engine}-{kills}-{jobs}"
    store = corpus.store(name)
    args = extract_args(corpus.dataset, name, *ENGINE_ARGS[engine], "--jobs", str(jobs))

    def restart() -> None:  # a run that ended before its kill: check it, start afresh
        assert_same_store(store, corpus.reference, corpus.manifest)
        shutil.rmtree(store)

    attempts = kill_repeatedly(
        f"R1 {engine}: {corpus.shards} shards",
        pipeline_command(corpus.data, *args),
        kills=kills,
        duration_s=corpus.seconds,
        finished=lambda: markers.is_complete(store),
        restart=restart,
        progress=lambda: (
            f"{len(done_shards(store)) if store.exists() else 0}/{corpus.shards} shards done"
        ),
        rng=np.random.default_rng([SEED, seed_offset]),
        log=tmp_path / f"{name}.log",
        ok_status=(1,),  # complete, with the corpus's two failed clips
        orphans=orphans,
    )
    out = run_cli(corpus.data, *args, expect=1)
    assert "2 clips failed" in out.stdout
    assert_same_store(store, corpus.reference, corpus.manifest)
    return kill_figures(
        f"R1 extraction ({engine}, --jobs {jobs}, {len(corpus.manifest)} clips in "
        f"{corpus.shards} shards, seed {SEED})",
        attempts,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_r1_killed_extraction_resumes_to_the_uninterrupted_store(
    corpora, tmp_path, engine, reliability_figures
):
    reliability_figures.append(_r1(corpora(FAST_CLIPS), tmp_path, engine, kills=2, seed_offset=0))


@pytest.mark.torture
@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("engine", ENGINES)
def test_r1_torture_many_kills(corpora, tmp_path, engine, jobs, reliability_figures):
    """With --jobs 2 the clips are decoded in worker processes, which outlive a killed run
    (see the next test): here they are killed after each kill, and the store still checked."""
    orphans: list[int] | None = [] if jobs > 1 else None
    figure = _r1(
        corpora(TORTURE_CLIPS),
        tmp_path,
        engine,
        kills=8,
        seed_offset=1 + jobs,
        jobs=jobs,
        orphans=orphans,
    )
    if orphans:
        figure += f"; {len(orphans)} decode workers and trackers outlived the kills"
    reliability_figures.append(figure)


@pytest.mark.torture
def test_r1_torture_decode_workers_die_with_a_killed_run(corpora):
    corpus = corpora(FAST_CLIPS)
    store = corpus.store("workers")
    proc = subprocess.Popen(
        pipeline_command(corpus.data, *extract_args(corpus.dataset, "workers", "--jobs", "2")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (store / "progress").is_dir() or not done_shards(store):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(10)
    left = session_processes(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} processes outlived the killed run by 10 s"


def _kill_at(corpus: Corpus, what: str, target: int, suffix: str = "") -> str:
    name = f"kill-{what}-{target}{suffix}"  # a store of its own in the shared corpus
    store = corpus.store(name)
    args = extract_args(corpus.dataset, name)
    killed = run_with_fault(corpus.data, "kill", what, target, args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not markers.is_complete(store)
    expected_done = {"data": target, "n_frames": target, "marker": target}.get(what)
    if expected_done is not None:
        assert done_shards(store) == list(range(expected_done))
    out = run_cli(corpus.data, *args, expect=1)
    assert "2 clips failed" in out.stdout
    assert_same_store(store, corpus.reference, corpus.manifest)
    return f"R1 kill while writing {what} (shard {target}): resumed store identical, 0 clips lost"


@pytest.mark.parametrize(
    "what,target",
    [("data", 3), ("n_frames", 3), ("marker", 3), ("complete", 0)],
)
@pytest.mark.torture
def test_r1_kill_inside_a_shard_write(corpora, what, target, reliability_figures):
    """Kills at chosen points of a shard write leave the shard to be redone, and no orphan."""
    reliability_figures.append(_kill_at(corpora(FAST_CLIPS), what, target))


def test_r1_kill_inside_a_shard_data_write(corpora, reliability_figures):
    """The fast version of the previous test: a kill half-way through writing a shard file."""
    reliability_figures.append(_kill_at(corpora(FAST_CLIPS), "data", 3, suffix="-fast"))


def test_r1_kill_while_the_store_is_created(corpora):
    _kill_at(corpora(FAST_CLIPS), "create", 0)
