"""The music of a demo clip: its time grid and harmony (:class:`Song`) and notes in beats and
in seconds, which the part writers of :mod:`.parts` and :mod:`.drums` produce."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

_T = TypeVar("_T")

# Drum kits (presets of the percussion bank) in TimGM6mb.
_DRUM_KITS = (0, 8, 16, 24, 25, 32)

_MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
}
# Chord roots as 0-based scale degrees, one chord per harmonic step.
_PROGRESSIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4)),
    "mixolydian": ((0, 6, 3, 0), (0, 3, 6, 3), (0, 6, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)),
    "dorian": ((0, 3, 0, 3), (0, 6, 3, 0), (0, 1, 6, 0)),
}


class Note(NamedTuple):
    """A note in musical time: starts ``beat`` beats into the piece and lasts ``beats``."""

    beat: float
    beats: float
    key: int
    velocity: int


class TimedNote(NamedTuple):
    """A note in seconds from the start of the clip (``start_s`` may be negative)."""

    start_s: float
    end_s: float
    key: int
    velocity: int


@dataclass(frozen=True)
class Song:
    """What every part of one clip agrees on: time grid and harmony."""

    tempo_bpm: float
    beats_per_bar: int
    tonic_pc: int
    mode: str
    progression: tuple[int, ...]
    bars_per_chord: int
    start_beat: float  # the clip is an excerpt starting this many beats into the piece
    duration_s: float
    drum_kit: int

    @property
    def beat_s(self) -> float:
        return 60.0 / self.tempo_bpm

    @property
    def bar_s(self) -> float:
        return self.beats_per_bar * self.beat_s

    @property
    def n_bars(self) -> int:
        """Bars needed to cover the excerpt."""
        beats = self.start_beat + self.duration_s / self.beat_s
        return int(np.ceil(beats / self.beats_per_bar)) + 1

    def time_s(self, beat: float) -> float:
        """Clip time of a beat counted from the start of the piece."""
        return (beat - self.start_beat) * self.beat_s

    def scale_pcs(self) -> tuple[int, ...]:
        return tuple((self.tonic_pc + step) % 12 for step in _MODES[self.mode])

    def chord_pcs(self, bar: int, *, seventh: bool = False) -> tuple[int, ...]:
        """Pitch classes of the chord in ``bar``, root first (a diatonic triad or seventh)."""
        degree = self.progression[(bar // self.bars_per_chord) % len(self.progression)]
        steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
        scale = self.scale_pcs()
        return tuple(scale[(degree + s) % 7] for s in steps)


def random_song(rng: np.random.Generator, *, duration_s: float) -> Song:
    """A piece to excerpt: tempo, metre, key, mode, progression, start and drum kit.

    Parameters
    ----------
    rng : np.random.Generator
        The clip's generator.
    duration_s : float
        Length of the excerpt in seconds.

    Returns
    -------
    Song
        70–160 BPM, 3 or 4 beats per bar, one of four modes and its progressions.
    """
    tempo_bpm = float(rng.uniform(70.0, 160.0))
    mode = str(rng.choice(list(_MODES), p=[0.4, 0.1, 0.35, 0.15]))
    options = _PROGRESSIONS[mode]
    beats_per_bar = 3 if rng.random() < 0.15 else 4
    return Song(
        tempo_bpm=tempo_bpm,
        beats_per_bar=beats_per_bar,
        tonic_pc=int(rng.integers(12)),
        mode=mode,
        progression=pick(rng, options),
        bars_per_chord=2 if tempo_bpm > 130 and rng.random() < 0.5 else 1,
        start_beat=float(rng.integers(0, 4 * beats_per_bar)) + pick(rng, (0.0, 0.5)),
        duration_s=duration_s,
        drum_kit=pick(rng, _DRUM_KITS),
    )


def pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One of ``options``, uniformly.

    Parameters
    ----------
    rng : np.random.Generator
        Draws one integer.
    options : sequence
        The choices, not empty.

    Returns
    -------
    object
        An element of ``options``.
    """
    return options[int(rng.integers(len(options)))]


def random_velocity(rng: np.random.Generator, base: float, *, spread: float = 6.0) -> int:
    """A MIDI velocity around ``base``: Gaussian with standard deviation ``spread``, rounded.

    Parameters
    ----------
    rng : np.random.Generator
        Draws one normal variate.
    base : float
        Mean velocity.
    spread : float
        Standard deviation, in velocity steps.

    Returns
    -------
    int
        In 1..127.
    """
    return int(np.clip(round(base + rng.normal(0.0, spread)), 1, 127))


def place_notes(
    notes: Sequence[Note], song: Song, rng: np.random.Generator, *, jitter_sd_s: float = 0.008
) -> list[TimedNote]:
    """Clip times of ``notes`` with human timing: onsets shifted by clipped Gaussian jitter.

    Parameters
    ----------
    notes : sequence of Note
        Notes in beats from the start of the piece.
    song : Song
        Gives the tempo and where the excerpt starts.
    rng : np.random.Generator
        Draws one shift per note.
    jitter_sd_s : float
        Standard deviation of the onset shift in seconds; shifts are clipped at 2.5 of them.

    Returns
    -------
    list of TimedNote
        In the order of ``notes``; every note lasts at least 30 ms.
    """
    limit_s = 2.5 * jitter_sd_s
    jitter = np.clip(rng.normal(0.0, jitter_sd_s, size=len(notes)), -limit_s, limit_s)
    timed = []
    for note, shift_s in zip(notes, jitter.tolist(), strict=True):
        start_s = song.time_s(note.beat) + shift_s
        end_s = start_s + max(note.beats * song.beat_s, 0.03)
        timed.append(TimedNote(start_s, end_s, note.key, note.velocity))
    return timed
