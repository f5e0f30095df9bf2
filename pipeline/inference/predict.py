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
* the clip's tag probabilities are the mean over its windows of sigmoid(logits);
* each window is also reported on its own (:attr:`PredictionResult.frames`): it starts at
  ``start frame × hop`` and lasts the samples its ``mel_frames`` frames are computed from
  (:func:`~pipeline.extract.frontends.num_samples`), cut at the file's duration; the last one
  ends at the file's end (up to one hop of trailing samples fills no whole frame), so the
  windows of a file cover it from 0 to its duration.

Inputs may be files, folders and glob patterns (:mod:`pipeline.inference.inputs`).

Log-mels are rounded to the mel store's dtype (float16) before they reach the model, as the
training items were read back from that store. Reading a run back is
:mod:`pipeline.inference.runs`; the result table is :mod:`pipeline.inference.results`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.data.audio import AudioError, load_audio
from pipeline.extract.frontends import MelFrontEnd, num_samples
from pipeline.inference.inputs import expand_inputs
from pipeline.inference.results import FRAME_COLUMNS, INFO_COLUMNS, PredictionResult
from pipeline.inference.runs import RunError, load_student
from pipeline.students import Student
from pipeline.train.loader import fit_frames

__all__ = [
    "MEL_STORE_DTYPE",
    "Predictor",
    "load_run",
    "window_starts",
]

log = logging.getLogger(__name__)

# dtype of the mel stores training reads (pipeline.stores.zarr_store.open_store's default)
MEL_STORE_DTYPE = np.float16


def window_starts(n_frames: int, window: int) -> list[int]:
    """First frame of each window over a clip of ``n_frames`` frames.

    Windows of ``window`` frames every ``window // 2`` frames (at least 1); the last window ends
    at the clip's last frame. A clip of at most ``window`` frames has the single start 0.

    Parameters
    ----------
    n_frames : length of the clip, in frames (at least 1)
    window : length of a window, in frames (at least 1)

    Returns
    -------
    list[int] -- increasing start frames, the last one ``max(n_frames - window, 0)``
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
    frame_s (seconds between mel frames), window_s (seconds of audio a window is computed
    from), device, model, frontend, config
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
        clash = sorted(set(self.classes) & {*INFO_COLUMNS, *FRAME_COLUMNS})
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
        mel_config = frontend.config
        self.frame_s = mel_config.hop_s
        window = num_samples(
            self.mel_frames, mel_config.hop_length, preemphasis=bool(mel_config.preemphasis)
        )
        self.window_s = window / mel_config.sample_rate_hz
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
        """Log-mel of a mono waveform, rounded as the mel store rounds it.

        Parameters
        ----------
        waveform : (samples,) mono audio at :attr:`sample_rate_hz`, at least the front end's
            ``min_duration_s`` long

        Returns
        -------
        np.ndarray -- (frames, n_mels) float32 with float16 precision
        """
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
        """Model inputs covering a clip; see the module doc.

        Parameters
        ----------
        mel : (frames, n_mels) log-mel of one clip

        Returns
        -------
        np.ndarray -- (n_windows, n_mels, mel_frames) float32
        """
        if len(mel) <= self.mel_frames:
            items = [fit_frames(mel, self.mel_frames)]
        else:
            items = [mel[s : s + self.mel_frames] for s in window_starts(len(mel), self.mel_frames)]
        return np.ascontiguousarray(np.stack(items).transpose(0, 2, 1), dtype=np.float32)

    def window_times(self, n_frames: int, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Start and end of each window of :meth:`windows` over a clip, in seconds.

        Parameters
        ----------
        n_frames : mel frames of the clip
        duration_s : the clip's duration in seconds; the windows' ends are cut at it

        Returns
        -------
        tuple[np.ndarray, np.ndarray] -- (n_windows,) float64 starts and ends; the first start
        is 0, the last end ``duration_s``
        """
        starts = np.asarray(window_starts(n_frames, self.mel_frames), dtype=np.float64)
        starts *= self.frame_s
        ends = np.minimum(starts + self.window_s, duration_s)
        ends[-1] = duration_s
        return starts, ends

    def window_probabilities(self, windows: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """Sigmoid probabilities of each window, ``batch_size`` windows a model call.

        Parameters
        ----------
        windows : (n, n_mels, mel_frames) float32 model inputs
        batch_size : windows per model call (at least 1)

        Returns
        -------
        np.ndarray -- (n, C) float32 probabilities
        """
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
        """Tag probabilities of a mono waveform: the mean over its windows of sigmoid(logits).

        Parameters
        ----------
        waveform : (samples,) mono audio at :attr:`sample_rate_hz`

        Returns
        -------
        np.ndarray -- (C,) float32 probabilities, in the order of :attr:`classes`
        """
        windows = self.windows(self.mel(waveform))
        return self.window_probabilities(windows).mean(axis=0)

    def predict_files(
        self, paths: Sequence[str | os.PathLike], *, batch_size: int = 16
    ) -> PredictionResult:
        """Decode, window and tag each file; windows of several files share model calls.

        A file that cannot be decoded (missing, unreadable, too short, …), a folder without
        audio files or a pattern that matches nothing is reported in ``failures`` with its
        cause; the others are still tagged. Results do not depend on ``batch_size``.

        Parameters
        ----------
        paths : audio files, folders (their audio files, recursively, sorted) or glob
            patterns (:func:`pipeline.inference.inputs.expand_inputs`), in the order of the
            table's rows
        batch_size : windows per model call (at least 1)

        Returns
        -------
        PredictionResult
        """
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError("paths is a sequence of files, not one file")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        rows: list[dict[str, Any]] = []
        files, failures = expand_inputs(paths)
        pending: list[tuple[dict[str, Any], np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            stacked = np.concatenate([w for _, w in pending])
            probs = self.window_probabilities(stacked, batch_size=batch_size)
            offset = 0
            for row, windows in pending:
                row["window_probs"] = probs[offset : offset + len(windows)]
                row["probs"] = row["window_probs"].mean(axis=0)
                offset += len(windows)
            pending.clear()

        for name in files:
            try:
                wave = load_audio(
                    name,
                    sr_hz=self.sample_rate_hz,
                    min_duration_s=self.frontend.min_duration_s,
                    max_duration_s=None,
                    clip=name,
                )
            except AudioError as err:
                failures[name] = err.cause
                log.info("cannot tag %s: %s", name, err.cause)
                continue
            mel = self.mel(wave)
            windows = self.windows(mel)
            row = {"file": name, "duration_s": len(wave) / self.sample_rate_hz}
            row["windows"] = len(windows)
            row["times"] = self.window_times(len(mel), row["duration_s"])
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
        return PredictionResult(
            table=table,
            failures=failures,
            classes=list(self.classes),
            frames=self._frame_table(rows),
        )

    def _frame_table(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per window of the tagged files: file, start_s, end_s, one column per class."""
        empty = np.zeros(0, dtype=np.float64)
        starts = np.concatenate([r["times"][0] for r in rows]) if rows else empty
        ends = np.concatenate([r["times"][1] for r in rows]) if rows else empty
        probs = (
            np.concatenate([r["window_probs"] for r in rows])
            if rows
            else np.zeros((0, len(self.classes)), dtype=np.float32)
        )
        files = [r["file"] for r in rows for _ in range(len(r["window_probs"]))]
        table = pd.DataFrame(
            {"file": pd.Series(files, dtype=object), "start_s": starts, "end_s": ends}
        )
        return pd.concat(
            [table, pd.DataFrame(probs.astype(np.float64), columns=self.classes)], axis=1
        )


def load_run(run: str | os.PathLike, *, device: str | torch.device | None = None) -> Predictor:
    """A :class:`Predictor` from a run folder (its ``best.pt``) or a checkpoint file.

    Parameters
    ----------
    run : run folder or checkpoint file
    device : where the student and the front end run (default: CUDA if available, else CPU)

    Returns
    -------
    Predictor -- warns with :class:`~pipeline.inference.runs.FrontEndChangedWarning` when the
    run's ``stores.json`` records a mel front end that differs from the current one in anything
    but code or library versions

    Raises
    ------
    FileNotFoundError
        When there is no checkpoint.
    RunError
        When the checkpoint cannot be turned into a predictor (:mod:`pipeline.inference.runs`).
    """
    trained = load_student(run, device=device, stacklevel=2)
    return Predictor(
        trained.model,
        trained.frontend,
        trained.classes,
        trained.mel_frames,
        config=trained.config,
    )
