"""Fingerprints: everything that determines a store's values, and how two of them compare.

A teacher's fingerprint names its settings, its weights (sha256) and an explicit
``output_version`` that is raised whenever a change to the code changes the values it produces
(golden-output tests fail until it is). Moving, renaming or re-commenting code changes nothing,
so caches that took days of GPU time stay valid across such changes.

Stores written before output versions existed hold a hash of the teacher's source file
(``code``) and the package version instead. Those written by the last code of that form are
read as output version 1 (:func:`upgrade`), so they stay current; older ones stay stale, as
they were.
"""

from __future__ import annotations

import json
from typing import Any

# The ``code`` hash in the fingerprints that the last code of the old form wrote, per teacher
# (``teacher``) or front end (``frontend``): those values are output version 1.
_LAST_SOURCE_HASHES = {
    ("teacher", "aisfx"): "4c483f78cfa1563f",
    ("teacher", "musicnn"): "c91cf0afd56eca6f",
    ("teacher", "openl3"): "2f710937b1184dae",
    ("teacher", "panns"): "7fa222420bb29d6f",
    ("teacher", "passt"): "c83d0b25aa03b48d",
    ("teacher", "vggish"): "f7a0e02669ea2668",
    ("teacher", "hear"): "bde0915dfd89ab28",
    ("frontend", "cp_resnet"): "0cb3f4492e500746",
    ("frontend", "mobile_fcn"): "0cb3f4492e500746",
}
# PaSST's fingerprint also held the hash of the log-mel code it shares with the front ends.
_LAST_LOG_MEL_HASH = "ae273d3016c15d14"
_OLD_KEYS = ("code", "pipeline_version", "mel_code")


def canonical(value: Any) -> Any:
    """JSON round trip, so tuples/lists and int/float keys compare as they are stored."""
    return json.loads(json.dumps(value, sort_keys=True))


def upgrade(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint of the old form (source hash) in today's form, where that is sound.

    Returns ``fingerprint`` unchanged unless it is of the old form and its hashes are those of
    the last code of that form; then ``code``, ``pipeline_version`` and ``mel_code`` give way
    to ``output_version`` 1 (and ``mel_version`` 1 for PaSST).
    """
    if "code" not in fingerprint or "output_version" in fingerprint:
        return fingerprint
    if "teacher" in fingerprint:
        teacher = fingerprint["teacher"]
        key = ("teacher", "hear" if str(teacher).startswith("hear:") else teacher)
    else:
        key = ("frontend", fingerprint.get("frontend"))
    if _LAST_SOURCE_HASHES.get(key) != fingerprint["code"]:
        return fingerprint
    if "mel_code" in fingerprint and fingerprint["mel_code"] != _LAST_LOG_MEL_HASH:
        return fingerprint
    new = {k: v for k, v in fingerprint.items() if k not in _OLD_KEYS}
    new["output_version"] = 1
    if "mel_code" in fingerprint:
        new["mel_version"] = 1
    return new


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences between a stored fingerprint ``old`` and a current ``new``, one line per key.

    ``old`` is read through :func:`upgrade` first; an empty list means the store is current.
    """
    old, new = canonical(upgrade(old)), canonical(new)
    return [
        f"{key}: {old.get(key, '<absent>')!r} → {new.get(key, '<absent>')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
