"""What tagging a set of audio files gives: a table of tag probabilities and the failures.

:meth:`pipeline.inference.predict.Predictor.predict_files` returns a :class:`PredictionResult`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.fileio import atomic_path

__all__ = ["INFO_COLUMNS", "PredictionResult"]

# columns of PredictionResult.table before the one column per class
INFO_COLUMNS = ("file", "duration_s", "windows")


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
        """For each predicted file, its ``k`` most probable classes, most probable first.

        Parameters
        ----------
        k : number of classes per file (at least 1)

        Returns
        -------
        list of (file, [(class, probability), ...]) -- one entry per row of :attr:`table`
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        probs = self.table[self.classes].to_numpy(dtype=np.float64)
        out = []
        for file, row in zip(self.table["file"], probs, strict=True):
            order = np.argsort(-row, kind="stable")[:k]
            out.append((str(file), [(self.classes[j], float(row[j])) for j in order]))
        return out

    def format_table(self, k: int = 5) -> str:
        """Readable text: one line per predicted file, the file then its top ``k`` tags.

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
