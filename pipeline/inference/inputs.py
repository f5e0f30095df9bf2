"""What ``pipeline predict`` is asked to tag: audio files, folders and glob patterns.

    files, failures = expand_inputs(["take1.wav", "sessions/", "live/*.flac"])

A folder stands for the audio files under it (found recursively, by suffix, sorted by path); a
pattern that names no existing path is expanded by the program (``**`` included), for shells
that do not expand it; anything else is kept as given, so that a missing file is reported by
the decoder with its cause.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["AUDIO_SUFFIXES", "audio_files", "expand_inputs"]

# suffixes of the files a folder stands for (any case)
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aif", ".aiff", ".au")
_GLOB_CHARS = "*?["


def audio_files(folder: str | os.PathLike) -> list[str]:
    """The audio files under ``folder``, recursively, sorted by path.

    Parameters
    ----------
    folder : a folder

    Returns
    -------
    list[str] -- paths (``folder`` joined with the relative path) of the files whose suffix is
    one of :data:`AUDIO_SUFFIXES`
    """
    root = Path(folder)
    return sorted(
        str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], dict[str, str]]:
    """Files to tag from files, folders and glob patterns, in input order, without repeats.

    Parameters
    ----------
    inputs : audio files, folders (searched recursively) or glob patterns

    Returns
    -------
    tuple[list[str], dict[str, str]] -- the files, and input → cause for a folder without audio
    files or a pattern that matches nothing
    """
    files: list[str] = []
    failures: dict[str, str] = {}
    for item in inputs:
        name = os.fspath(item)
        path = Path(name)
        if path.is_dir():
            found = audio_files(path)
            if not found:
                failures[name] = f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder"
        elif not path.exists() and any(c in name for c in _GLOB_CHARS):
            found = []
            for match in sorted(glob.glob(name, recursive=True)):
                found += audio_files(match) if Path(match).is_dir() else [match]
            if not found:
                failures[name] = "no file matches this pattern"
        else:
            found = [name]
        files += found
    return list(dict.fromkeys(files)), failures
