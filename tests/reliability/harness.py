"""The reliability tests' shared machinery: the command line under kills and injected faults,
and the corpus of rendered demo music they extract.

The requirements, one test file each (tests/reliability/test_r<N>_*.py):

R1  SIGKILL extraction at random moments and at chosen points of a store write, then resume:
    the store equals an uninterrupted run's (arrays, n_frames, failures, fingerprint, files),
    no clip is lost or doubled, no temporary file is left.
R2  SIGKILL training at random moments, then resume: the metrics and best.pt of an
    uninterrupted run.
R3  A corpus of broken, odd and hostile inputs: one line per clip naming it and the cause, the
    run goes on, failure tables, nothing written outside the data folder, exit status 1.
R4  Weights, teacher options, mel front end or clips changed after a store was made: the stale
    store is refused naming the difference, or rebuilt saying why; never mixed.
R5  A write fails with ENOSPC in the middle of a shard: that shard is not marked done, the
    rerun completes the store.

`make test` runs the fast versions (R2's fast version is tests/test_train.py's kill test);
`make torture` runs those marked ``torture`` (``pytest -m torture``). Random choices derive from
``RELIABILITY_SEED`` (default below); the seed and every kill moment are printed, and repeated in
assertion messages, so a failure can be replayed. Kill moments are uniform over the measured
duration of an uninterrupted run; a run that ends before its kill is not counted as a kill.

Extraction engines: :data:`ENGINE_ARGS` maps each engine to its extra command-line arguments;
R1 runs once per engine in it. Only the local engine is listed; add the Ray engine there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from command_line import run_cli

from pipeline.data.manifest import Manifest
from pipeline.stores import markers, read_store

SEED = int(os.environ.get("RELIABILITY_SEED", "1223"))
# Extraction engines R1 kills, with the extra `extract` arguments that select each.
# The Ray engine goes here, e.g. "ray": ["--engine", "ray"].
ENGINE_ARGS: dict[str, list[str]] = {"local": []}
ENGINES = list(ENGINE_ARGS)

# Small shards and batches: many shards, so kills and faults land between and inside them.
STORE_ARGS = ["--shard-size", "2", "--batch-size", "2", "--jobs", "1", "--quiet"]
FAST_CLIPS, TORTURE_CLIPS = 10, 38  # demo clips: 6 and 20 shards with the 2 failing ones


# ------------------------------------------------------------------------------- helpers
def extract_args(dataset: str, name: str, *extra: str) -> list[str]:
    return ["extract", dataset, "musicnn", "--name", name, *STORE_ARGS, *extra]


def store_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def temporary_files(root: Path) -> list[str]:
    """Leftovers of interrupted writes under ``root``: zarr's and ours end in ``.partial``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".partial" in p.name)


def done_shards(store: Path) -> list[int]:
    return sorted(markers.done_shards(store))


def assert_same_store(path: Path, reference: Path, manifest: Manifest) -> None:
    """Equal to the uninterrupted store in every clip, failure and file; none lost or doubled."""
    got, want = read_store(path), read_store(reference)
    assert got.fingerprint == want.fingerprint
    assert got.clip_ids == want.clip_ids == manifest.clip_ids
    assert len(set(got.clip_ids)) == len(got.clip_ids), "a clip is in the store twice"
    np.testing.assert_array_equal(got.n_frames, want.n_frames)
    assert got.failures() == want.failures()
    for clip, a, b in zip(
        got.clip_ids, got.read_batch(got.clip_ids), want.read_batch(want.clip_ids), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=clip)
    # Every clip is either embedded or failed with a cause, never both, never neither.
    failed = got.failures()
    for row, clip in enumerate(got.clip_ids):
        assert (got.n_frames[row] > 0) != (clip in failed), clip
    # One done marker per shard, covering each row exactly once.
    rows = []
    reference_markers = markers.shard_markers(reference)
    for shard, marker in markers.shard_markers(path).items():
        start, stop = marker["rows"]
        rows.extend(range(start, stop))
        assert marker == reference_markers[shard], f"shard {shard}"
    assert rows == list(range(len(manifest)))
    assert store_files(path) == store_files(reference)
    assert not temporary_files(path)
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]


def session_processes(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (a killed run's orphaned workers)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@dataclass
class Attempt:
    moment_s: float
    killed: bool  # a real kill: the run was still going and not complete
    state: str  # progress at the kill, or how the run ended


def kill_repeatedly(
    label: str,
    command: list[str],
    *,
    kills: int,
    duration_s: float,
    finished: Callable[[], bool],
    restart: Callable[[], None],
    progress: Callable[[], str],
    rng: np.random.Generator,
    log: Path,
    ok_status: tuple[int, ...] = (0,),
    max_attempts: int | None = None,
    orphans: list[int] | None = None,
) -> list[Attempt]:
    """Start ``command`` and SIGKILL it at a moment drawn uniformly from (0, duration_s), over
    and over (each start resumes the killed run), until ``kills`` kills landed while the run was
    not finished. A run that finishes before its moment is not a kill: ``restart`` checks its
    result and removes it, and the next attempt starts afresh. Each killed run's process
    session must be empty 30 s after the kill (no orphaned workers); given ``orphans``, those
    left after 3 s are killed and listed there instead."""
    attempts: list[Attempt] = []
    max_attempts = max_attempts or 4 * kills + 8

    def story() -> str:
        lines = [f"{label}: seed {SEED}, uninterrupted run {duration_s:.2f} s"]
        lines += [
            f"  attempt {i + 1}: kill at {a.moment_s:.2f} s: "
            + ("killed, " if a.killed else "not a kill, ")
            + a.state
            for i, a in enumerate(attempts)
        ]
        return "\n".join(lines)

    while sum(a.killed for a in attempts) < kills:
        assert len(attempts) < max_attempts, f"{kills} kills did not land\n{story()}"
        moment = float(rng.uniform(0.0, duration_s))
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            if not finished():
                os.kill(proc.pid, signal.SIGKILL)
        status = proc.wait(timeout=600)
        if status == -signal.SIGKILL and not finished():
            attempts.append(Attempt(moment, True, progress()))
            deadline = time.monotonic() + (30 if orphans is None else 3)
            while session_processes(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = session_processes(proc.pid)
            for pid in left:  # ours: clean up before failing
                os.kill(pid, signal.SIGKILL)
            if orphans is not None:
                orphans.extend(left)
            else:
                assert not left, f"processes {left} outlived the killed run\n{story()}"
            continue
        ended = "finished first" if status != -signal.SIGKILL else "complete at the kill"
        attempts.append(Attempt(moment, False, f"{ended} (exit status {status}): restarted"))
        if not finished() or status not in (*ok_status, -signal.SIGKILL):
            raise AssertionError(
                f"a resumed run failed\n{story()}\n--- log\n{log.read_text()[-4000:]}"
            )
        restart()
    print(story())
    return attempts


def kill_figures(label: str, attempts: list[Attempt]) -> str:
    """One line for the run's summary: kills landed; how many found work already saved (by
    this attempt or earlier ones), and how many hit a run that had saved new work itself
    (killed in the middle of its work, not while starting)."""
    kills, saved, during, before = [], 0, 0, 0
    for a in attempts:
        if not a.killed:
            before = 0  # a run that ended first was removed: the next one starts afresh
            continue
        done = int(a.state.split("/")[0])
        kills.append(a)
        saved += done > 0
        during += done > before
        before = done
    return (
        f"{label}: {len(kills)} kills landed in {len(attempts)} attempts ({saved} with work "
        f"already saved, {during} after the killed run itself had saved some; moments "
        f"{', '.join(f'{a.moment_s:.2f}' for a in kills)} s); resumed result identical to the "
        "uninterrupted one, 0 clips lost"
    )


# ---------------------------------------------------------------------------- corpora
@dataclass
class Corpus:
    """A CSV dataset of rendered demo music plus two clips that always fail, and the store of
    one uninterrupted extraction of it."""

    data: Path
    dataset: str
    manifest: Manifest
    reference: Path
    seconds: float  # wall time of the uninterrupted extraction command

    @property
    def shards(self) -> int:
        return (len(self.manifest) + 1) // 2

    def store(self, name: str) -> Path:
        return self.data / "cache" / self.dataset / f"{name}.zarr"


def write_dataset_csv(path: Path, demo: Manifest, extra: list[tuple[str, str]]) -> Path:
    """The demo clips (splits 70 / 15 / 15 % in order) plus ``extra`` (clip, path) rows."""
    n = len(demo)
    rows = []
    for i, (clip, audio) in enumerate(zip(demo.clip_ids, demo.clips["path"], strict=True)):
        split = "train" if i < 0.7 * n else "valid" if i < 0.85 * n else "test"
        labels = demo.clips.iloc[i][list(demo.classes)]
        cells = ["" if pd.isna(v) else str(int(v)) for v in labels]
        rows.append([clip, audio, split, *cells])
    rows += [[clip, audio, "train", *([""] * len(demo.classes))] for clip, audio in extra]
    frame = pd.DataFrame(rows, columns=["clip_id", "path", "split", *demo.classes])
    frame.to_csv(path, index=False)
    return path


def build_corpus(root: Path, n_demo: int) -> Corpus:
    data = root / "data"
    run_cli(data, "data", "demo", "--clips", str(n_demo))
    demo = Manifest.read(data / "manifests" / "demo.parquet")
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("not audio at all\n" * 10)
    sf.write(inputs / "one-sample.wav", np.zeros(1, np.float32), 16000)
    extra = [
        ("broken-text", str(inputs / "notes.txt")),
        ("one-sample", str(inputs / "one-sample.wav")),
    ]
    csv = write_dataset_csv(inputs / "clips.csv", demo, extra)
    run_cli(data, "data", "kills", "--csv", str(csv))
    manifest = Manifest.read(data / "manifests" / "kills.parquet")
    run_cli(data, *extract_args("kills", "reference"), expect=1)  # complete, 2 clips failed
    # A second uninterrupted run, timed (the first one pays for cold caches): the duration the
    # kill moments are drawn from. It must also equal the first, or R1 could not hold.
    started = time.perf_counter()
    run_cli(data, *extract_args("kills", "again"), expect=1)
    seconds = time.perf_counter() - started
    corpus = Corpus(data, "kills", manifest, data / "cache/kills/reference.zarr", seconds)
    assert_same_store(corpus.store("again"), corpus.reference, manifest)
    assert len(read_store(corpus.reference).failures()) == 2
    return corpus


# --------------------------------------------------------------- injected faults


# A wrapper around the command line that injects a fault at one point of a store write:
# SIGKILL of the process itself ("kill-…") or a full disk ("enospc-…"), where "…" names the
# write: the "data" or "n_frames" file of shard K, the done "marker" of shard K, the COMPLETE
# marker, or the store's creation ("create": while the clip_id array is written, after the
# arrays' metadata). A fault in a file write first writes half of it, as a real one would.
FAULTS = textwrap.dedent(
    """
    import errno, os, signal, sys
    fault, what, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.argv[1:4] = []

    def fail(tmp, data):
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    from zarr.storage import _local

    put = _local._put

    def faulty_put(path, value, exclusive=False):
        parts = path.parts
        hit = {
            "data": parts[-5:-2] == ("data", "c", str(target)),
            "n_frames": parts[-3:] == ("n_frames", "c", str(target)),
            "create": parts[-3:] == ("clip_id", "c", "0"),
        }.get(what, False)
        if not hit:
            return put(path, value, exclusive)
        path.parent.mkdir(parents=True, exist_ok=True)
        view = memoryview(value.as_buffer_like()).cast("B")
        with _local._atomic_write(path, "wb", exclusive=exclusive) as f:
            f.write(view[: len(view) // 2])
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    _local._put = faulty_put

    import pipeline.stores.markers as store

    write_atomic = store.write_text

    def faulty_write_atomic(path, text):
        name = "COMPLETE" if what == "complete" else f"shard-{target:06d}"
        if what in ("marker", "complete") and path.parent.name == name:
            path.parent.mkdir(parents=True, exist_ok=True)
            fail(path.with_name(path.name + ".partial"), text.encode())
        return write_atomic(path, text)

    store.write_text = faulty_write_atomic

    from pipeline.cli import main

    sys.exit(main())
    """
)


def run_with_fault(data: Path, fault: str, what: str, target: int, args: list[str]):
    return subprocess.run(
        [sys.executable, "-c", FAULTS, fault, what, str(target), "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
