"""Reliability: kills, bad inputs, stale stores and a full disk, through the real command line.

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

import ctypes
import json
import os
import shutil
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
import pytest
import soundfile as sf
import torch
import zarr

from pipeline.data.manifest import Manifest
from pipeline.stores.zarr_store import read_store

SEED = int(os.environ.get("RELIABILITY_SEED", "1223"))
# Extraction engines R1 kills, with the extra `extract` arguments that select each.
# The Ray engine goes here, e.g. "ray": ["--engine", "ray"].
ENGINE_ARGS: dict[str, list[str]] = {"local": []}
ENGINES = list(ENGINE_ARGS)
TIMING_COLUMNS = ["seconds", "clips_per_s"]

# Small shards and batches: many shards, so kills and faults land between and inside them.
STORE_ARGS = ["--shard-size", "2", "--batch-size", "2", "--jobs", "1", "--quiet"]


# ------------------------------------------------------------------------------- helpers
def _command(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "--data-dir", str(data_dir), *args]


def cli(
    data_dir: Path, *args: str, expect: int | None = 0, **options
) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline`` and check its exit status (``expect=None``: any)."""
    result = subprocess.run(
        _command(data_dir, *args), capture_output=True, text=True, timeout=600, **options
    )
    if expect is not None and result.returncode != expect:
        raise AssertionError(
            f"pipeline {' '.join(args)}: exit status {result.returncode}, expected {expect}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def extract_args(dataset: str, name: str, *extra: str) -> list[str]:
    return ["extract", dataset, "musicnn", "--name", name, *STORE_ARGS, *extra]


def store_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def temporary_files(root: Path) -> list[str]:
    """Leftovers of interrupted writes under ``root``: zarr's and ours end in ``.partial``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".partial" in p.name)


def done_shards(store: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (store / "progress").glob("shard-*.json"))


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
    for marker in sorted((path / "progress").glob("shard-*.json")):
        start, stop = json.loads(marker.read_text())["rows"]
        rows.extend(range(start, stop))
        ref = reference / "progress" / marker.name
        assert json.loads(marker.read_text()) == json.loads(ref.read_text()), marker.name
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
def _tone(seconds: float, sr: int, hz: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([mono] * channels, 1) if channels > 1 else mono


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
    cli(data, "data", "demo", "--clips", str(n_demo))
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
    cli(data, "data", "kills", "--csv", str(csv))
    manifest = Manifest.read(data / "manifests" / "kills.parquet")
    cli(data, *extract_args("kills", "reference"), expect=1)  # complete, 2 clips failed
    # A second uninterrupted run, timed (the first one pays for cold caches): the duration the
    # kill moments are drawn from. It must also equal the first, or R1 could not hold.
    started = time.perf_counter()
    cli(data, *extract_args("kills", "again"), expect=1)
    seconds = time.perf_counter() - started
    corpus = Corpus(data, "kills", manifest, data / "cache/kills/reference.zarr", seconds)
    assert_same_store(corpus.store("again"), corpus.reference, manifest)
    assert len(read_store(corpus.reference).failures()) == 2
    return corpus


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Callable[[int], Corpus]:
    """Corpus of ``n`` demo clips (+ 2 failing ones), built on first use and shared."""
    built: dict[int, Corpus] = {}

    def get(n: int) -> Corpus:
        if n not in built:
            built[n] = build_corpus(tmp_path_factory.mktemp(f"corpus{n}"), n)
        return built[n]

    return get


FAST_CLIPS, TORTURE_CLIPS = 10, 38  # demo clips: 6 and 20 shards with the 2 failing ones


# ------------------------------------------------------------------- R1: killed extraction
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
        _command(corpus.data, *args),
        kills=kills,
        duration_s=corpus.seconds,
        finished=lambda: (store / "COMPLETE").exists(),
        restart=restart,
        progress=lambda: (
            f"{len(done_shards(store)) if store.exists() else 0}/{corpus.shards} shards done"
        ),
        rng=np.random.default_rng([SEED, seed_offset]),
        log=tmp_path / f"{name}.log",
        ok_status=(1,),  # complete, with the corpus's two failed clips
        orphans=orphans,
    )
    out = cli(corpus.data, *args, expect=1)
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
        _command(corpus.data, *extract_args(corpus.dataset, "workers", "--jobs", "2")),
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

    import pipeline.stores.zarr_store as store

    write_atomic = store._write_atomic

    def faulty_write_atomic(path, text):
        name = "COMPLETE" if what == "complete" else f"shard-{target:06d}.json"
        if what in ("marker", "complete") and path.name == name:
            fail(path.with_name(path.name + ".partial"), text.encode())
        return write_atomic(path, text)

    store._write_atomic = faulty_write_atomic

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


def _kill_at(corpus: Corpus, what: str, target: int) -> str:
    name = f"kill-{what}-{target}"
    store = corpus.store(name)
    args = extract_args(corpus.dataset, name)
    killed = run_with_fault(corpus.data, "kill", what, target, args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (store / "COMPLETE").exists()
    expected_done = {"data": target, "n_frames": target, "marker": target}.get(what)
    if expected_done is not None:
        assert done_shards(store) == list(range(expected_done))
    out = cli(corpus.data, *args, expect=1)
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
    reliability_figures.append(_kill_at(corpora(FAST_CLIPS), "data", 3))


def test_r1_kill_while_the_store_is_created(corpora):
    _kill_at(corpora(FAST_CLIPS), "create", 0)


# ----------------------------------------------------------------------- R3: bad inputs
def unprivileged() -> dict:
    """subprocess options under which file permissions hold for the child.

    Root reads a mode-000 file anyway, through the capabilities CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH; as root the child starts with both dropped from its bounding set (the
    interpreter itself lives under /root, out of reach of an unprivileged user id)."""
    if os.geteuid() != 0:
        return {}
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2

    def drop() -> None:
        for cap in (cap_dac_override, cap_dac_read_search):
            if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return {"preexec_fn": drop}


def require_permissions_to_hold(locked: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(locked)!r}, 'rb')"],
        capture_output=True,
        text=True,
        **unprivileged(),
    )
    if "PermissionError" not in probe.stderr:
        pytest.skip(
            f"cannot test unreadable files: a child process reads a mode-000 file as uid "
            f"{os.geteuid()} ({probe.stderr.strip()[-200:] or 'no error'}); as root this needs "
            "CAP_SETPCAP to drop CAP_DAC_OVERRIDE"
        )


def tree(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` but inside ``skip``: (mode, size, mtime)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip:
            dirs[:] = []
            continue
        for name in dirs + files:
            path = Path(folder) / name
            if path == skip:
                continue
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@dataclass
class Item:
    clip: str
    path: str  # relative to the CSV
    outcome: str  # "embedded", "failed" (at extraction) or "rejected" (from the manifest)
    cause: str = ""  # a fragment of the reported cause


def write_bad_inputs(folder: Path) -> list[Item]:
    """The audio files and the CSV (``clips.csv``) of R3; returns what each row should give."""
    sr = 16000
    items = [Item(f"tone-{k:02d}", f"tones/tone-{k:02d}.wav", "embedded") for k in range(30)] + [
        Item("truncated-mp3", "bad/truncated.mp3", "failed", "truncated or damaged"),
        Item("zero-bytes", "bad/empty.wav", "failed", "empty file (0 bytes)"),
        Item("nan-samples", "bad/nan.wav", "failed", "non-finite samples: 3 NaN and 0 infinite"),
        Item("inf-samples", "bad/inf.wav", "failed", "non-finite samples: 0 NaN and 2 infinite"),
        Item("one-sample", "bad/one.wav", "failed", "1 sample long"),
        Item("text-as-mp3", "bad/readme.mp3", "failed", "not in an audio format libsndfile"),
        Item("vanished", "bad/vanished.wav", "failed", "file not found"),
        Item("locked-late", "bad/locked-late.wav", "failed", "permission denied"),
        Item("silence", "odd/silence.wav", "embedded"),
        Item("96k-6ch", "odd/96k-6ch.wav", "embedded"),
        Item("ogg-as-wav", "odd/vorbis.wav", "embedded"),
        Item("Motörhead – Ünïcødé ♫", "Motörhead/Ünïcødé ♫.wav", "embedded"),
        Item("../../escape", "odd/escape.wav", "embedded"),
        Item("mtat/0/../../../up/clip.mp3", "odd/slashes.wav", "embedded"),
        Item("missing", "bad/not-there.wav", "rejected", "audio file does not exist"),
        Item("locked", "bad/locked.wav", "rejected", "not readable (permission denied)"),
        Item("tone-03", "odd/dup.wav", "rejected", "duplicate clip ID: CSV line"),
        Item("", "odd/no-id.wav", "rejected", "empty clip ID (CSV line"),
    ]
    for k in range(30):
        path = folder / items[k].path
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _tone(3.2, sr, 200 + 25 * k), sr)
    for sub in ("bad", "odd", "Motörhead"):
        (folder / sub).mkdir()
    tone = _tone(3.5, sr)
    sf.write(folder / "bad/full.mp3", _tone(8.0, sr), sr, format="MP3")
    full = (folder / "bad/full.mp3").read_bytes()
    (folder / "bad/truncated.mp3").write_bytes(full[: int(0.4 * len(full))])
    (folder / "bad/full.mp3").unlink()
    (folder / "bad/empty.wav").write_bytes(b"")
    nan, inf = tone.copy(), tone.copy()
    nan[[10, 500, 9000]] = np.nan
    inf[[20, 30]] = [np.inf, -np.inf]
    sf.write(folder / "bad/nan.wav", nan, sr, subtype="FLOAT")
    sf.write(folder / "bad/inf.wav", inf, sr, subtype="FLOAT")
    sf.write(folder / "bad/one.wav", tone[:1], sr)
    (folder / "bad/readme.mp3").write_text("These are not the samples you are looking for.\n" * 9)
    for name in ("vanished", "locked-late", "locked"):
        sf.write(folder / f"bad/{name}.wav", tone, sr)
    (folder / "bad/locked.wav").chmod(0)
    sf.write(folder / "odd/silence.wav", np.zeros_like(tone), sr)
    sf.write(folder / "odd/96k-6ch.wav", _tone(3.5, 96000, 330, channels=6), 96000)
    sf.write(folder / "odd/vorbis.wav", tone, sr, format="OGG", subtype="VORBIS")
    for name in ("Motörhead/Ünïcødé ♫.wav", "odd/escape.wav", "odd/slashes.wav", "odd/dup.wav"):
        sf.write(folder / name, tone, sr)
    sf.write(folder / "odd/no-id.wav", tone, sr)
    rows = [[i.clip, i.path, "train", "1" if i.clip.startswith("tone") else "0"] for i in items]
    pd.DataFrame(rows, columns=["clip_id", "path", "split", "tonal"]).to_csv(
        folder / "clips.csv", index=False
    )
    return items


def test_r3_bad_inputs_are_named_and_the_run_goes_on(tmp_path, reliability_figures):
    inputs, data, cwd = tmp_path / "inputs", tmp_path / "data", tmp_path / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    items = write_bad_inputs(inputs)
    require_permissions_to_hold(inputs / "bad/locked.wav")
    options = {"cwd": cwd, **unprivileged()}
    neighbours = sorted(p.name for p in tmp_path.parent.iterdir())
    before = tree(tmp_path, skip=data)

    # -- the manifest: rows with a problem of their own are left out and listed
    out = cli(data, "data", "bad", "--csv", str(inputs / "clips.csv"), expect=1, **options)
    rejected = [i for i in items if i.outcome == "rejected"]
    lines = out.stdout.splitlines()
    for item in rejected:
        shown = item.clip or "<empty clip ID>"
        assert [ln for ln in lines if f"rejected {shown}: " in ln and item.cause in ln], item
    table = pd.read_csv(data / "manifests/bad.rejected.csv", keep_default_na=False)
    assert table["clip_id"].tolist() == [i.clip for i in rejected]
    for item, cause in zip(rejected, table["cause"], strict=True):
        assert item.cause in cause, (item, cause)
    assert "CSV line 5" in table["cause"].iloc[2]  # tone-03's first row
    manifest = Manifest.read(data / "manifests/bad.parquet")
    kept = [i for i in items if i.outcome != "rejected"]
    assert manifest.clip_ids == [i.clip for i in kept]
    assert tree(tmp_path, skip=data) == before

    # -- after the manifest: one file disappears, another becomes unreadable
    (inputs / "bad/vanished.wav").unlink()
    (inputs / "bad/locked-late.wav").chmod(0)
    before = tree(tmp_path, skip=data)

    out = cli(data, "extract", "bad", "musicnn", *STORE_ARGS, expect=1, **options)
    failed = [i for i in items if i.outcome == "failed"]
    assert (
        f"{len(kept) - len(failed)}/{len(kept)} clips embedded, {len(failed)} failed" in out.stdout
    )
    lines = out.stdout.splitlines()
    for item in failed:
        assert [ln for ln in lines if item.clip in ln and item.cause in ln], item
    table = pd.read_csv(data / "cache/bad/musicnn.failures.csv", keep_default_na=False)
    causes = dict(zip(table["clip_id"], table["cause"], strict=True))
    assert sorted(causes) == sorted(i.clip for i in failed)
    for item in failed:
        assert item.cause in causes[item.clip], (item, causes[item.clip])
    store = read_store(data / "cache/bad/musicnn.zarr")
    assert store.failures() == causes
    assert store.clip_ids == manifest.clip_ids
    for item in kept:
        emb = store.read(item.clip)
        if item.outcome == "embedded":
            assert len(emb) >= 1 and np.isfinite(emb.astype(np.float32)).all(), item
        else:
            assert len(emb) == 0, item

    # -- nothing written outside the data folder, nor in the working directory
    assert tree(tmp_path, skip=data) == before
    assert not list(cwd.iterdir())
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == neighbours
    odd = [i for i in kept if i.outcome == "embedded" and not i.clip.startswith("tone-")]
    reliability_figures.append(
        f"R3: {len(items) - 30} bad or odd inputs among 30 good clips: {len(rejected)} left out "
        f"of the manifest, {len(failed)} failed at extraction, {len(odd)} embedded (silence, "
        "96 kHz 6-channel, Ogg named .wav, Unicode path, IDs with ../ and /); each named with "
        "its cause; nothing written outside data/"
    )


@pytest.mark.parametrize(
    "text,where",
    [
        ('a,x.wav,train,1\n"b,y.wav,test,0\n', "line 3: malformed CSV (a quoted field"),
        ("a,x.wav,train,1\nb,y.wav,test,0,1\n", "line 3: 5 fields, the header has 4"),
        ("a,x.wav,train,1\nb,y.wav\n", "line 3: 2 fields, the header has 4"),
        ("a,x.wav,train,1\n\nMot\xf6rhead,y.wav,test,1\n", "line 4: not UTF-8 text"),
    ],
    ids=["unbalanced-quote", "extra-field", "missing-fields", "latin-1"],
)
def test_r3_malformed_csv_is_one_line_naming_file_and_line(
    tmp_path, capsys, text, where, reliability_figures, request
):
    from pipeline.cli import main

    for name in ("x", "y"):
        sf.write(tmp_path / f"{name}.wav", _tone(0.5, 8000), 8000)
    csv = tmp_path / "clips.csv"
    csv.write_bytes(("clip_id,path,split,piano\n" + text).encode("latin-1"))
    assert main(["--data-dir", str(tmp_path / "data"), "data", "mine", "--csv", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: mine: {csv}: {err.split(': ', 3)[3]}" and err.count("\n") == 1
    assert where in err
    assert not (tmp_path / "data" / "manifests").exists()
    line = where.split(":")[0]
    reliability_figures.append(
        f"R3 malformed CSV ({request.node.callspec.id}): one error naming the file and {line}, "
        "exit status 2"
    )


# ------------------------------------------------------------------- R4: stale stores
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
    out = cli(
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
    out = cli(corpus.data, *args, "--replace-stale", expect=1)
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
    cli(corpus.data, *mels, "--overwrite", expect=1)  # the corpus's two broken clips fail
    current = read_store(mel).fingerprint
    _set_fingerprint(mel, preemphasis=0.9)
    return mel, mels, current


def test_r4_changed_mel_front_end_is_refused(corpora, reliability_figures):
    """A mel store whose front-end settings differ from the code's: `mels` refuses it, naming
    the setting, and leaves it as it is."""
    mel, mels, _ = _stale_mel_store(corpora(FAST_CLIPS))
    before = snapshot(mel)
    refused = cli(mel.parents[2], *mels, expect=2)
    assert "made with other settings (preemphasis: 0.9 → 0.97)" in refused.stderr
    assert snapshot(mel) == before
    reliability_figures.append("R4 mel front end changed: `mels` refused naming preemphasis")


@pytest.mark.torture
def test_r4_torture_training_rebuilds_a_stale_mel_store_saying_why(corpora):
    """`train` makes its mel store itself: a stale one is computed again from scratch, and the
    message names the setting that changed."""
    corpus = corpora(FAST_CLIPS)
    mel, _, current = _stale_mel_store(corpus)
    out = cli(corpus.data, "train", corpus.dataset, *TRAIN_SETTINGS)
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
    cli(corpus.data, "data", "changed", "--csv", str(csv))
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
    out = cli(corpus.data, "train", "changed", *settings, expect=2)
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
    out = cli(corpus.data, *extract_args("changed", "musicnn", "--replace-stale"), expect=1)
    assert f"{teacher} was made for other clips than the manifest: 1 clips" in out.stdout
    assert (
        read_store(teacher).clip_ids
        == Manifest.read(corpus.data / "manifests" / "changed.parquet").clip_ids
    )


# ----------------------------------------------------------------------- R5: disk full
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
    assert not (store / "COMPLETE").exists()
    partial, reference = read_store(store, require_complete=False), read_store(corpus.reference)
    rows = range(2 * target)  # shards 0 .. target-1 keep their values
    np.testing.assert_array_equal(partial.n_frames[rows], reference.n_frames[rows])
    ids = [partial.clip_ids[r] for r in rows]
    for a, b, clip in zip(partial.read_batch(ids), reference.read_batch(ids), ids, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=clip)

    out = cli(corpus.data, *args, expect=1)
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


# ------------------------------------------------------------------ R2: killed training
def _sibling(data: Path, folder: Path) -> Path:
    """A data folder sharing ``data``'s manifests and stores but with runs of its own."""
    folder.mkdir()
    for name in ("manifests", "cache", "datasets"):
        (folder / name).symlink_to(data / name)
    return folder


def _metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING_COLUMNS)


EPOCHS = 10


@pytest.mark.torture
def test_r2_torture_killed_training_ends_as_an_uninterrupted_run(tmp_path, reliability_figures):
    """(The fast version is tests/test_train.py::test_sigkill_then_rerun_ends_with_the_
    uninterrupted_metrics: one kill.) Three or more kills at random moments, the killed runs
    with a loader worker process, the uninterrupted one without."""
    data = tmp_path / "data"
    cli(data, "data", "demo", "--clips", "64")
    cli(data, "extract", "demo", "musicnn", "--quiet")
    cli(data, "mels", "demo", "--frontend", "mobile_fcn", "--quiet")
    settings = ["train", "demo", "teacher=musicnn", f"max_epochs={EPOCHS}", "-q"]
    started = time.perf_counter()
    cli(_sibling(data, tmp_path / "uninterrupted"), *settings, "--workers", "0")
    seconds = time.perf_counter() - started
    [reference] = (tmp_path / "uninterrupted" / "runs" / "demo").iterdir()

    killed = _sibling(data, tmp_path / "killed")
    run_dir = killed / "runs" / "demo" / reference.name

    def epochs() -> int:
        metrics = run_dir / "metrics.csv"
        return len(pd.read_csv(metrics)) if metrics.is_file() else 0

    def restart() -> None:  # a run that ended before its kill: check it, start afresh
        pd.testing.assert_frame_equal(_metrics(run_dir), _metrics(reference))
        shutil.rmtree(run_dir)

    attempts = kill_repeatedly(
        f"R2: {EPOCHS} epochs",
        _command(killed, *settings, "--workers", "1"),
        kills=4,
        duration_s=seconds,
        finished=lambda: (run_dir / "train.json").exists(),
        restart=restart,
        progress=lambda: f"{epochs()}/{EPOCHS} epochs done",
        rng=np.random.default_rng([SEED, 10]),
        log=tmp_path / "train.log",
    )
    cli(killed, *settings, "--workers", "1")
    pd.testing.assert_frame_equal(_metrics(run_dir), _metrics(reference))
    resumed = torch.load(run_dir / "best.pt", weights_only=True)
    uninterrupted = torch.load(reference / "best.pt", weights_only=True)
    assert resumed["epoch"] == uninterrupted["epoch"]
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert (
        json.loads((run_dir / "train.json").read_text())["best_valid_map"]
        == json.loads((reference / "train.json").read_text())["best_valid_map"]
    )
    assert not temporary_files(run_dir)
    reliability_figures.append(
        kill_figures(f"R2 training ({EPOCHS} epochs, 64 clips, seed {SEED})", attempts)
    )
