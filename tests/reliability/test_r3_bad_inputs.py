"""R3: a corpus of broken, odd and hostile inputs: one line per clip naming it and the cause,
the run goes on, failure tables, nothing written outside the data folder, exit status 1; a
malformed CSV is one error naming the file and the line."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from command_line import run_cli
from harness import STORE_ARGS

from pipeline.data.manifest import Manifest
from pipeline.stores import read_store


def _tone(seconds: float, sr: int, hz: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([mono] * channels, 1) if channels > 1 else mono


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
    out = run_cli(data, "data", "bad", "--csv", str(inputs / "clips.csv"), expect=1, **options)
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

    out = run_cli(data, "extract", "bad", "musicnn", *STORE_ARGS, expect=1, **options)
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
