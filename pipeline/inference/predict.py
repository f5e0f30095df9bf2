"""Tag new audio with a trained student.

    predictor = load_run("data/runs/openmic/cp_resnet-panns-1a2b3c4d")
    result = predictor.predict_files(["song.mp3", "take2.wav"])
    print(result.format_table(k=5))
    result.to_csv("tags.csv")

A student is trained on items of exactly ``mel_frames`` frames (``config["mel_frames"]``): clips
shorter than that are repeated from their start, longer ones are cropped to their beginning
(:func:`pipeline.train.loader.fit_frames`). Prediction presents windows of the same length:

* the log-mel of the whole file is computed once, with the run's front end;
* a file of at most ``mel_frames`` frames gives one window, padded the training way (wrap);
* a longer file gives windows of ``mel_frames`` frames every ``mel_frames // 2`` frames, the last
  one aligned to the end of the file so that the tail is covered without zero padding;
* the clip's tag probabilities are the mean over its windows of sigmoid(logits).

Log-mels are rounded to the mel store's dtype (float16) before they reach the model, as the
training items were read back from that store.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.data.audio import AudioError, load_audio
from pipeline.extract.frontends import MelFrontEnd, create_frontend
from pipeline.paths import mel_store_name
from pipeline.stores.fingerprint import fingerprint_diff
from pipeline.stores.zarr_store import read_store
from pipeline.students import Student, create_student
from pipeline.train.loader import fit_frames

__all__ = [
    "CHECKPOINT_NAME",
    "FrontEndChangedWarning",
    "PredictionResult",
    "Predictor",
    "RunError",
    "load_run",
    "window_starts",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "best.pt"
# dtype of the mel stores training reads (pipeline.stores.zarr_store.open_store's default)
MEL_STORE_DTYPE = np.float16
# columns of PredictionResult.table before the one column per class
INFO_COLUMNS = ("file", "duration_s", "windows")


class RunError(ValueError):
    """A checkpoint that cannot be turned into a predictor (missing keys, wrong shapes)."""


class FrontEndChangedWarning(UserWarning):
    """The mel front end now computes other spectrograms than the ones the run was trained on."""


def window_starts(n_frames: int, window: int) -> list[int]:
    """First frame of each window over a clip of ``n_frames`` frames.

    Windows of ``window`` frames every ``window // 2`` frames (at least 1); the last window ends
    at the clip's last frame. A clip of at most ``window`` frames has the single start 0.
    """
    if n_frames < 1 or window < 1:
        raise ValueError(f"need n_frames >= 1 and window >= 1, got {n_frames} and {window}")
    if n_frames <= window:
        return [0]
    hop = max(window // 2, 1)
    last = n_frames - window
    starts = list(range(0, last + 1, hop))
    if starts[-1] != last:
        starts.append(last)
    return starts


@dataclass
class PredictionResult:
    """Tag probabilities of the files that could be read, and the causes for the others.

    Attributes
    ----------
    table : one row per predicted file, in input order: ``file``, ``duration_s`` (seconds after
        decoding), ``windows`` (number of windows averaged), then one probability per class
    failures : file → why it could not be tagged
    classes : class names, the order of the probability columns
    """

    table: pd.DataFrame
    failures: dict[str, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :attr:`table` (all probabilities) as CSV; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path, index=False)
        return path

    def top_tags(self, k: int = 5) -> list[tuple[str, list[tuple[str, float]]]]:
        """For each predicted file, its ``k`` most probable classes, most probable first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        probs = self.table[self.classes].to_numpy(dtype=np.float64)
        out = []
        for file, row in zip(self.table["file"], probs, strict=True):
            order = np.argsort(-row, kind="stable")[:k]
            out.append((str(file), [(self.classes[j], float(row[j])) for j in order]))
        return out

    def format_table(self, k: int = 5) -> str:
        """Readable text: one line per predicted file, the file then its top ``k`` tags."""
        rows = self.top_tags(k)
        if not rows:
            return "(no file could be tagged)"
        width = max(len("file"), *(len(file) for file, _ in rows))
        lines = [f"{'file':<{width}}  top {min(k, len(self.classes))} tags"]
        for file, tags in rows:
            lines.append(
                f"{file:<{width}}  " + "  ".join(f"{name} {prob:.2f}" for name, prob in tags)
            )
        return "\n".join(lines)


class Predictor:
    """A trained student with its mel front end, ready to tag waveforms and audio files.

    Parameters
    ----------
    model : the student, with its trained weights
    frontend : the front end the student's training mels were computed with
    classes : names of the student's outputs
    mel_frames : frames of every training item, the window length here
    config : the run's resolved training config (kept for reference)

    Attributes
    ----------
    classes, sample_rate_hz (rate :meth:`predict_waveform` expects), mel_frames, hop_frames,
    device, model, frontend, config
    """

    def __init__(
        self,
        model: Student,
        frontend: MelFrontEnd,
        classes: Sequence[str],
        mel_frames: int,
        *,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.classes = [str(c) for c in classes]
        clash = sorted(set(self.classes) & set(INFO_COLUMNS))
        if clash:
            raise RunError(f"class names {clash} collide with the table's own columns")
        if model.n_classes != len(self.classes):
            raise RunError(f"the student has {model.n_classes} outputs for {len(classes)} classes")
        if model.n_mels != frontend.dim:
            raise RunError(
                f"the student takes {model.n_mels} mel bands, front end {frontend.preset!r} "
                f"gives {frontend.dim}"
            )
        if mel_frames < 1:
            raise RunError(f"mel_frames must be at least 1, got {mel_frames}")
        self.model = model.eval()
        self.frontend = frontend
        self.mel_frames = int(mel_frames)
        self.hop_frames = max(self.mel_frames // 2, 1)
        self.sample_rate_hz = frontend.sample_rate_hz
        self.config = dict(config or {})
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        return (
            f"Predictor({self.config.get('student', type(self.model).__name__)!r}, "
            f"frontend={self.frontend.preset!r}, {len(self.classes)} classes, "
            f"mel_frames={self.mel_frames}, device={str(self.device)!r})"
        )

    # -- building blocks ---------------------------------------------------------------------
    def mel(self, waveform: np.ndarray) -> np.ndarray:
        """(frames, n_mels) log-mel of a mono waveform at :attr:`sample_rate_hz`, as stored."""
        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected a mono (samples,) waveform, got shape {wave.shape}")
        if len(wave) < self.frontend.min_duration_s * self.sample_rate_hz:
            raise ValueError(
                f"{len(wave) / self.sample_rate_hz:.3f} s long, needs at least "
                f"{self.frontend.min_duration_s} s"
            )
        mel = self.frontend.embed([wave])[0]
        return mel.astype(MEL_STORE_DTYPE).astype(np.float32)

    def windows(self, mel: np.ndarray) -> np.ndarray:
        """(frames, n_mels) → (n_windows, n_mels, mel_frames) model inputs; see the module doc."""
        if len(mel) <= self.mel_frames:
            items = [fit_frames(mel, self.mel_frames)]
        else:
            items = [mel[s : s + self.mel_frames] for s in window_starts(len(mel), self.mel_frames)]
        return np.ascontiguousarray(np.stack(items).transpose(0, 2, 1), dtype=np.float32)

    def window_probabilities(self, windows: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """(n, n_mels, mel_frames) windows → (n, C) sigmoid probabilities, ``batch_size`` a call."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), batch_size):
                x = torch.from_numpy(windows[i : i + batch_size]).to(self.device)
                logits, _ = self.model(x)
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)

    # -- public API --------------------------------------------------------------------------
    def predict_waveform(self, waveform: np.ndarray) -> np.ndarray:
        """(C,) tag probabilities of a mono waveform at :attr:`sample_rate_hz`.

        The mean over the clip's windows of sigmoid(logits).
        """
        windows = self.windows(self.mel(waveform))
        return self.window_probabilities(windows).mean(axis=0)

    def predict_files(
        self, paths: Sequence[str | os.PathLike], *, batch_size: int = 16
    ) -> PredictionResult:
        """Decode, window and tag each file; windows of several files share model calls.

        A file that cannot be decoded (missing, unreadable, too short, …) is reported in
        ``failures`` with its cause; the others are still tagged.
        """
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError("paths is a sequence of files, not one file")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        rows: list[dict[str, Any]] = []
        failures: dict[str, str] = {}
        pending: list[tuple[dict[str, Any], np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            stacked = np.concatenate([w for _, w in pending])
            probs = self.window_probabilities(stacked, batch_size=batch_size)
            offset = 0
            for row, windows in pending:
                row["probs"] = probs[offset : offset + len(windows)].mean(axis=0)
                offset += len(windows)
            pending.clear()

        for path in paths:
            name = os.fspath(path)
            try:
                wave = load_audio(
                    path,
                    sr_hz=self.sample_rate_hz,
                    min_duration_s=self.frontend.min_duration_s,
                    max_duration_s=None,
                    clip=name,
                )
            except AudioError as err:
                failures[name] = err.cause
                log.info("cannot tag %s: %s", name, err.cause)
                continue
            windows = self.windows(self.mel(wave))
            row = {"file": name, "duration_s": len(wave) / self.sample_rate_hz}
            row["windows"] = len(windows)
            rows.append(row)
            pending.append((row, windows))
            if sum(len(w) for _, w in pending) >= batch_size:
                flush()
        flush()

        probs = (
            np.stack([row.pop("probs") for row in rows])
            if rows
            else np.zeros((0, len(self.classes)), dtype=np.float32)
        )
        table = pd.DataFrame(
            {
                "file": pd.Series([r["file"] for r in rows], dtype=object),
                "duration_s": pd.Series([r["duration_s"] for r in rows], dtype=np.float64),
                "windows": pd.Series([r["windows"] for r in rows], dtype=np.int64),
            }
        )
        table = pd.concat(
            [table, pd.DataFrame(probs.astype(np.float64), columns=self.classes)], axis=1
        )
        return PredictionResult(table=table, failures=failures, classes=list(self.classes))


# -- loading a run -------------------------------------------------------------------------------
def _checkpoint_path(run: Path) -> Path:
    path = run / CHECKPOINT_NAME if run.is_dir() else run
    if not path.is_file():
        dataset = run.parent.name if run.is_dir() and run.parent.parent.name == "runs" else "..."
        raise FileNotFoundError(
            f"no checkpoint at {path}: train it first with `make train DATASET={dataset} ...`"
        )
    return path


def _mel_store_entry(stores: dict[str, Any], frontend: str) -> tuple[str, dict[str, Any]] | None:
    """The stores.json entry of the run's mel store (by name, else by the recorded front end)."""
    name = f"{mel_store_name(frontend)}.zarr"
    for key, entry in stores.items():
        if Path(key).name == name:
            return key, entry
    for key, entry in stores.items():
        if entry.get("fingerprint", {}).get("frontend") == frontend:
            return key, entry
    return None


def _is_code_or_version(key: str) -> bool:
    return key == "code" or key.endswith("version")


def _check_frontend(recorded: dict[str, Any], frontend: MelFrontEnd, where: Path) -> None:
    """Warn when the front end differs from the training one in anything but code or versions."""
    current = frontend.fingerprint()
    changed = [
        line
        for line in fingerprint_diff(recorded, current)
        if not _is_code_or_version(line.split(":", 1)[0])
    ]
    if changed:
        keys = [line.split(":", 1)[0] for line in changed]
        warnings.warn(
            f"{where}: front end {frontend.preset!r} changed since training in "
            f"{', '.join(keys)} ({'; '.join(changed)}); predictions may be off",
            FrontEndChangedWarning,
            stacklevel=3,
        )
    else:
        drift = fingerprint_diff(recorded, current)
        if drift:
            log.info("%s: front end code or versions changed since training: %s", where, drift)


def _mel_frames_from_store(entry: tuple[str, dict[str, Any]] | None, checkpoint: Path) -> int:
    """Runs trained before ``mel_frames`` entered the config: the mel store's max_frames."""
    if entry is not None and Path(entry[0]).exists():
        return read_store(entry[0], require_complete=False).max_frames
    raise RunError(
        f"{checkpoint}: the config has no mel_frames and the run's mel store "
        f"({entry[0] if entry else 'not recorded'}) cannot be read to recover it"
    )


def load_run(run: str | os.PathLike, *, device: str | None = None) -> Predictor:
    """A :class:`Predictor` from a run folder (its ``best.pt``) or a checkpoint file.

    ``device``: where the student and the front end run (default: cuda if available, else cpu).
    Warns with :class:`FrontEndChangedWarning` when the run's ``stores.json`` records a mel
    front end that differs from the current one in anything but code or library versions.
    """
    path = _checkpoint_path(Path(run))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(checkpoint, dict) or not {"model", "config"} <= set(checkpoint):
        raise RunError(f"{path}: not a student checkpoint (expected 'model' and 'config' entries)")
    config = dict(checkpoint["config"])
    missing = [k for k in ("student", "frontend", "classes") if k not in config]
    if missing:
        raise RunError(f"{path}: the checkpoint's config lacks {', '.join(missing)}")

    frontend = create_frontend(config["frontend"], device=device)
    stores_json = path.parent / "stores.json"
    entry = None
    if stores_json.is_file():
        entry = _mel_store_entry(json.loads(stores_json.read_text()), frontend.preset)
        if entry is not None and "fingerprint" in entry[1]:
            _check_frontend(entry[1]["fingerprint"], frontend, path.parent)

    n_mels = int(config.get("n_mels", frontend.dim))
    if "mel_frames" in config:
        mel_frames = int(config["mel_frames"])
    else:
        mel_frames = _mel_frames_from_store(entry, path)
    model = create_student(
        config["student"],
        n_classes=len(config["classes"]),
        n_mels=n_mels,
        **dict(config.get("student_options") or {}),
    )
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise RunError(f"{path}: weights do not fit student {config['student']!r}: {err}") from None
    model = model.to(device).eval()
    return Predictor(model, frontend, config["classes"], mel_frames, config=config)
