"""How a dataset's manifest was made, so later commands need only the dataset's name.

``python -m pipeline data NAME --csv clips.csv`` writes, next to the manifest, a record of its
source (``data/manifests/NAME.source.json``)::

    {"source": "csv", "csv": "/abs/clips.csv", "root": null, "split_dir": null,
     "clips": null, "seed": null}

A later ``data NAME`` without any source option rebuilds from the recorded source, and Make's
parameter stamp of the data stage (:mod:`pipeline.stamps`) fills empty ``CSV``, ``ROOT``,
``SPLITS`` and ``CLIPS`` from it: ``make extract DATASET=NAME`` after ``make data DATASET=NAME
CSV=...`` finds the data stage unchanged. Giving any source option describes a new source,
which rebuilds the manifest and replaces the record. Paths are recorded absolute.

The audio files a manifest was built from (its clips' and its rejected rows') are listed next to
it (``NAME.audio.txt``, one path per line): :func:`audio_digest` hashes their sizes and
modification times, so audio replaced in place makes Make rebuild the manifest (its durations)
and the stores then extract the changed clips again.

Only the standard library is imported here: :mod:`pipeline.stamps` runs on every ``make``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.fileio import write_json, write_text
from pipeline.paths import audio_list_path, source_record_path

#: The options of ``data`` that describe a source, in the record's order.
SOURCE_OPTIONS = ("root", "csv", "split_dir", "clips", "seed")
#: Options whose values are paths (recorded absolute).
PATH_OPTIONS = ("root", "csv", "split_dir")
#: Make's variable for each option it can set (``seed`` has none).
MAKE_VARIABLES = {"ROOT": "root", "CSV": "csv", "SPLITS": "split_dir", "CLIPS": "clips"}


def describe(source: str, **options: Any) -> dict[str, Any]:
    """A source record: the adapter's name and its options, paths made absolute.

    Parameters
    ----------
    source : str
        The dataset adapter (``csv``, ``demo``, ``openmic``, …).
    **options
        Values of :data:`SOURCE_OPTIONS`; missing ones are recorded as None.

    Returns
    -------
    dict
        ``{"source": ..., "root": ..., "csv": ..., "split_dir": ..., "clips": ..., "seed": ...}``
        with JSON values (paths as absolute strings).
    """
    record: dict[str, Any] = {"source": source}
    for key in SOURCE_OPTIONS:
        value = options.get(key)
        if key in PATH_OPTIONS and value is not None:
            value = os.path.abspath(os.fspath(value))
        record[key] = value
    return record


def gives_source(**options: Any) -> bool:
    """Whether any source option is given (not None and not empty).

    Parameters
    ----------
    **options
        Values of :data:`SOURCE_OPTIONS`.

    Returns
    -------
    bool
    """
    return any(options.get(key) not in (None, "") for key in SOURCE_OPTIONS)


def read_source(data_dir: str | os.PathLike, dataset: str) -> dict[str, Any] | None:
    """The recorded source of a dataset.

    Parameters
    ----------
    data_dir : str or os.PathLike
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    dict or None
        The record (see :func:`describe`); None when there is none or it cannot be read (a
        manifest built before sources were recorded, or a damaged file).
    """
    path = source_record_path(data_dir, dataset)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "source" in record else None


def write_source(data_dir: str | os.PathLike, dataset: str, record: dict[str, Any]) -> Path:
    """Record a dataset's source (atomically).

    Parameters
    ----------
    data_dir : str or os.PathLike
        Root of everything generated.
    dataset : str
        The dataset's name.
    record : dict
        From :func:`describe`.

    Returns
    -------
    Path
        The record's file.
    """
    return write_json(source_record_path(data_dir, dataset), record)


def builder_options(record: dict[str, Any]) -> dict[str, Any]:
    """The keyword options a dataset builder takes for a recorded source.

    Parameters
    ----------
    record : dict
        From :func:`describe` or :func:`read_source`.

    Returns
    -------
    dict
        :data:`SOURCE_OPTIONS` → value, paths as :class:`~pathlib.Path`, None where not given
        (:func:`pipeline.data.datasets.build_manifest` drops those).
    """
    options = {key: record.get(key) for key in SOURCE_OPTIONS}
    for key in PATH_OPTIONS:
        if options[key] is not None:
            options[key] = Path(options[key])
    return options


def write_audio_list(data_dir: str | os.PathLike, dataset: str, paths: Iterable[str]) -> Path:
    """List the audio files a manifest was built from (atomically), one path per line.

    Parameters
    ----------
    data_dir : str or os.PathLike
        Root of everything generated.
    dataset : str
        The dataset's name.
    paths : iterable of str
        The clips' paths and those of the rows left out (a file that appears later counts).

    Returns
    -------
    Path
        The list's file.
    """
    lines = sorted({str(p) for p in paths if p and "\n" not in str(p)})
    return write_text(audio_list_path(data_dir, dataset), "".join(f"{p}\n" for p in lines))


def audio_digest(data_dir: str | os.PathLike, dataset: str) -> str:
    """A hash of the size and modification time of each listed audio file ("missing" for one
    that is not there).

    Parameters
    ----------
    data_dir : str or os.PathLike
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    str
        Hex digest; "" when there is no list (a manifest built before lists were written).
        One ``stat`` per file: about a second per million files on a local disk.
    """
    try:
        lines = audio_list_path(data_dir, dataset).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    digest = hashlib.sha256()
    for path in lines:
        try:
            info = os.stat(path)
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def make_values(record: dict[str, Any]) -> dict[str, str]:
    """The Make variables a recorded source stands for, as Make would have passed them.

    Parameters
    ----------
    record : dict
        From :func:`read_source`.

    Returns
    -------
    dict of str to str
        ``ROOT``, ``CSV``, ``SPLITS``, ``CLIPS`` → value, "" where the record has none.
    """
    values = {}
    for variable, key in MAKE_VARIABLES.items():
        value = record.get(key)
        values[variable] = "" if value is None else str(value)
    return values


def summary(record: dict[str, Any]) -> str:
    """The record in a few words, e.g. ``csv=/data/clips.csv``.

    Parameters
    ----------
    record : dict
        From :func:`describe`.

    Returns
    -------
    str
        The source's name and the options it was given.
    """
    given = [f"{key}={record[key]}" for key in SOURCE_OPTIONS if record.get(key) is not None]
    return f"{record['source']}" + (f" ({', '.join(given)})" if given else "")
