"""The identity of a clip's audio, recorded with the values made from it, and what changed since.

A clip's values in a store are only as current as the audio they were made from: a dataset
rebuilt with the same clip IDs but other audio must not be served the old values. So each
shard's done marker records, per clip, the identity of the audio file read for it (``audio``
in :mod:`pipeline.stores.markers`): its resolved absolute ``path``, ``size`` in bytes and
modification time ``mtime_ns`` (None for both where the file could not be found), and with
``content_hash`` its ``sha256``. The identity is taken just before the clip is decoded, so a
file replaced while it is decoded reads as changed at the next run.

A later run compares each recorded identity with the manifest's file now
(:func:`check_audio`):

- without ``content_hash``, or for a record without a hash: a change of path, size or
  modification time makes the clip stale;
- with ``content_hash`` and a recorded hash, the content decides: a file copied, moved or
  touched with the same bytes is not stale (its record is brought up to date instead), other
  bytes are;
- a file missing at its recorded path is not taken for a change: the values stay (a dataset on
  an unmounted disk must not turn every clip into a failure) and the clips are named. A clip
  whose manifest path changed to a missing file is stale, and fails when extracted again.

Clips of shards written before identities were recorded have none: they are trusted as they
are and nothing is recorded for them until their shard is written again, since nothing says
which audio they were made from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.fileio import content_sha256
from pipeline.stores import markers

#: Clips named in a line before "… and N more".
NAMED_CLIPS = 5
# Recorded field → the words that name its change.
_FIELDS = (("path", "path"), ("size", "size"), ("mtime_ns", "modification time"))


def audio_identity(path: str | os.PathLike, *, content_hash: bool = False) -> dict[str, Any]:
    """The identity of an audio file now: what a shard's marker records per clip.

    Parameters
    ----------
    path : str or os.PathLike
        The clip's audio file, as the manifest gives it.
    content_hash : bool
        Also hash the file's bytes (reads the whole file).

    Returns
    -------
    dict
        ``path`` (resolved, absolute), ``size`` (bytes) and ``mtime_ns`` (ns since the epoch),
        the last two None when the file cannot be found; ``sha256`` (hex) with
        ``content_hash`` for a file that exists.
    """
    resolved = os.path.realpath(path)
    try:
        stat = os.stat(resolved)
    except OSError:
        return {"path": resolved, "size": None, "mtime_ns": None}
    identity = {"path": resolved, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if content_hash:
        with suppress(OSError):  # unreadable: the decoder says why
            identity["sha256"] = content_sha256(resolved)
    return identity


@dataclass(frozen=True)
class Verdict:
    """How a clip's audio compares with its record: ``changed`` names what changed (empty: the
    same audio), ``missing`` is set when the file is gone from its recorded path, and
    ``current`` is the identity now where the record should be brought up to date to it (same
    content, other path, size or time), else None."""

    changed: tuple[str, ...] = ()
    missing: bool = False
    current: dict[str, Any] | None = None


def compare(recorded: Mapping[str, Any], path: str, *, content_hash: bool) -> Verdict:
    """Compare a clip's recorded audio identity with its file now.

    Parameters
    ----------
    recorded : mapping
        The identity recorded when the clip was extracted (:func:`audio_identity`).
    path : str
        The clip's audio file in the manifest now.
    content_hash : bool
        Let the content decide where the record has a hash (the file is read whenever its
        size is unchanged).

    Returns
    -------
    Verdict
    """
    now = audio_identity(path)
    stat_changes = tuple(words for key, words in _FIELDS if recorded.get(key) != now[key])
    if now["size"] is None and recorded.get("size") is not None:
        if now["path"] == recorded.get("path"):
            return Verdict(missing=True)
        return Verdict(changed=stat_changes)
    if not (content_hash and recorded.get("sha256")) or now["size"] is None:
        return Verdict(changed=stat_changes)
    if now["size"] != recorded.get("size"):
        return Verdict(changed=(*stat_changes, "content"))
    now = audio_identity(path, content_hash=True)
    if now.get("sha256") != recorded["sha256"]:
        return Verdict(changed=(*stat_changes, "content"))
    return Verdict(current=now if stat_changes else None)


@dataclass
class AudioCheck:
    """What :func:`check_audio` found in a store's records.

    ``changed``: clip → what changed, per stale clip; ``rows``: shard → the rows of its stale
    clips; ``missing``: the clips whose audio file is gone (values kept); ``refreshed``: shard →
    its marker with the records of clips whose content was verified the same brought up to date.
    """

    changed: dict[str, str] = field(default_factory=dict)
    rows: dict[int, list[int]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    refreshed: dict[int, dict[str, Any]] = field(default_factory=dict)


def check_audio(
    store: Path, clip_ids: Sequence[str], paths: Sequence[str], *, content_hash: bool = False
) -> AudioCheck:
    """Compare the audio identities recorded in a store's done shards with the manifest's files.

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder.
    clip_ids : sequence of str
        The store's clips in row order (the manifest's).
    paths : sequence of str
        The manifest's audio file per clip.
    content_hash : bool
        Let the content decide where a hash was recorded (see the module's docstring).

    Returns
    -------
    AudioCheck
        Nothing found for shards without records (written before identities were recorded).
    """
    rows = {clip: row for row, clip in enumerate(clip_ids)}
    check = AudioCheck()
    for shard, marker in markers.shard_markers(store).items():
        updated: dict[str, Any] = {}
        for clip, recorded in marker.get("audio", {}).items():
            row = rows[clip]
            verdict = compare(recorded, str(paths[row]), content_hash=content_hash)
            if verdict.changed:
                check.changed[clip] = ", ".join(verdict.changed)
                check.rows.setdefault(shard, []).append(row)
            elif verdict.missing:
                check.missing.append(clip)
            elif verdict.current is not None:
                updated[clip] = verdict.current
        if shard in check.rows:
            check.rows[shard].sort()
        if updated:
            check.refreshed[shard] = {**marker, "audio": {**marker["audio"], **updated}}
    return check


def _named(clips: Mapping[str, str] | Sequence[str]) -> str:
    """A few clips (with what changed, for a mapping), then how many more."""
    shown = list(clips)[:NAMED_CLIPS]
    if isinstance(clips, Mapping):
        names = [f"{clip!r} ({clips[clip]})" for clip in shown]
    else:
        names = [repr(clip) for clip in shown]
    more = len(clips) - len(shown)
    return ", ".join(names) + (f" … and {more} more" if more else "")


def _clips(n: int) -> str:
    return f"{n} clip's" if n == 1 else f"{n} clips'"


def changed_line(store: str | os.PathLike, changed: Mapping[str, str]) -> str:
    """The line a run says before it extracts clips again whose audio changed.

    Parameters
    ----------
    store : str or os.PathLike
        The store, as named in the run's summary.
    changed : mapping of str to str
        Clip → what changed (:attr:`AudioCheck.changed`), at least one.

    Returns
    -------
    str
        e.g. ``"….zarr: 2 clips' audio changed since they were extracted ('a' (size,
        modification time), 'b' (path)): extracting them again"`` (for one clip: "since it
        was", "extracting it").
    """
    they, were, them = ("it", "was", "it") if len(changed) == 1 else ("they", "were", "them")
    return (
        f"{store}: {_clips(len(changed))} audio changed since {they} {were} extracted "
        f"({_named(changed)}): extracting {them} again"
    )


def missing_line(store: str | os.PathLike, missing: Sequence[str]) -> str:
    """The line a run says about clips whose audio file is gone from where it was read.

    Parameters
    ----------
    store : str or os.PathLike
        The store, as named in the run's summary.
    missing : sequence of str
        The clips (:attr:`AudioCheck.missing`), at least one.

    Returns
    -------
    str
        The count, a few clip IDs, and that their stored values are kept.
    """
    n = len(missing)
    files = "1 clip's audio file is" if n == 1 else f"{n} clips' audio files are"
    return f"{store}: {files} missing ({_named(missing)}): their stored values are kept"


def begin_update(store: Path, check: AudioCheck, *, say: Callable[[str], None] = print) -> None:
    """Act on a check before a run writes: bring the refreshed records up to date, name the
    clips whose audio is missing or changed, and, when some changed, withdraw the store's
    completion marker, so that a run killed while it extracts them again leaves the store
    incomplete (the next run finds the same clips changed, since a shard's records change only
    with its marker, after its values).

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder.
    check : AudioCheck
        What :func:`check_audio` found.
    say : callable
        Where the lines go.
    """
    for shard, marker in check.refreshed.items():
        markers.write_shard_marker(store, shard, marker)
    if check.missing:
        say(missing_line(store, check.missing))
    if check.changed:
        say(changed_line(store, check.changed))
        markers.withdraw_complete(store)
