"""What tagging a set of audio files gives: a table of tag probabilities and the failures.

:meth:`pipeline.inference.predict.Predictor.predict_files` returns a :class:`PredictionResult`:
one row per file, and one row per analysis window in its ``frames`` table
(:meth:`PredictionResult.by_window` makes that table the result's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.fileio import atomic_path

__all__ = ["FRAME_COLUMNS", "INFO_COLUMNS", "PredictionResult"]

# columns of PredictionResult.table before the one column per class
INFO_COLUMNS = ("file", "duration_s", "windows")
# columns of PredictionResult.frames before the one column per class
FRAME_COLUMNS = ("file", "start_s", "end_s")


@dataclass
class PredictionResult:
    """Tag probabilities of the files that could be read, and the causes for the others.

    Attributes
    ----------
    table : one row per predicted file, in input order: ``file``, ``duration_s`` (seconds after
        decoding), ``windows`` (number of windows averaged), then one probability per class
    failures : file → why it could not be tagged
    classes : class names, the order of the probability columns
    frames : one row per analysis window, files in the order of :attr:`table` and windows in
        time order: ``file``, ``start_s``, ``end_s`` (seconds), then one probability per class;
        a file's row of :attr:`table` is the mean of its rows here. ``None`` when not computed.
    """

    table: pd.DataFrame
    failures: dict[str, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    frames: pd.DataFrame | None = None

    def by_window(self) -> PredictionResult:
        """The same result with one row per window: :attr:`frames` as its table.

        Returns
        -------
        PredictionResult -- table ``file, start_s, end_s, <classes>``; same failures

        Raises
        ------
        ValueError
            When the windows were not kept (:attr:`frames` is ``None``).
        """
        if self.frames is None:
            raise ValueError("this result holds no per-window probabilities")
        return PredictionResult(self.frames, dict(self.failures), list(self.classes))

    def _labels(self) -> list[str]:
        """Each row's name: its file, followed by its time span for a window's row."""
        files = [str(f) for f in self.table["file"]]
        if "start_s" not in self.table:
            return files
        spans = zip(self.table["start_s"], self.table["end_s"], strict=True)
        return [f"{f} {a:.2f}-{b:.2f}s" for f, (a, b) in zip(files, spans, strict=True)]

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :attr:`table` (all probabilities) as CSV, atomically.

        Parameters
        ----------
        path : the CSV file; its folder is created if missing

        Returns
        -------
        Path -- ``path``
        """
        with atomic_path(path) as tmp:
            self.table.to_csv(tmp, index=False)
        return Path(path)

    def top_tags(self, k: int = 5) -> list[tuple[str, list[tuple[str, float]]]]:
        """For each row (file or window), its ``k`` most probable classes, most probable first.

        Parameters
        ----------
        k : number of classes per file (at least 1)

        Returns
        -------
        list of (label, [(class, probability), ...]) -- one entry per row of :attr:`table`;
        the label is the file, followed by ``" <start>-<end>s"`` for a window
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        probs = self.table[self.classes].to_numpy(dtype=np.float64)
        out = []
        for label, row in zip(self._labels(), probs, strict=True):
            order = np.argsort(-row, kind="stable")[:k]
            out.append((label, [(self.classes[j], float(row[j])) for j in order]))
        return out

    def format_table(self, k: int = 5) -> str:
        """Readable text: one line per row (file or window), its label then its top ``k`` tags.

        Parameters
        ----------
        k : number of tags per file

        Returns
        -------
        str -- a header line then one line per file, probabilities with two decimals
        """
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
