"""Drum-kit parts: grooves with fills (``drums``) and crashes, rides and accents (``cymbals``).

Keys are General MIDI percussion keys, played on the drum channel with the clip's kit.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.datasets.demo.music import Note, Song, pick, random_velocity

_KICK, _SNARE, _SIDE_STICK, _CLAP = 36, 38, 37, 39
_HAT_CLOSED, _HAT_PEDAL, _HAT_OPEN = 42, 44, 46
_TOMS = (50, 48, 47, 45, 43, 41)  # high to low
_CRASHES, _RIDE, _RIDE_BELL, _CHINA, _SPLASH = (49, 57), 51, 53, 52, 55


# Grooves: the sixteenth-note steps of a bar on which each drum plays.
_GROOVES_4: tuple[dict[str, tuple[int, ...]], ...] = (
    {"kick": (0, 8, 10), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    {"kick": (0, 6, 8), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12), "open": (14,)},
    {"kick": (0, 3, 10), "snare": (4, 12), "ghost": (7, 15), "hat": tuple(range(16))},
    {"kick": (0,), "snare": (8,), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    {"kick": (0, 4, 8, 12), "snare": (4, 12), "hat": (0, 4, 8, 12), "open": (2, 6, 10, 14)},
    {"kick": (0, 7, 8), "side": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14), "pedal": (4, 12)},
)
_GROOVES_3: tuple[dict[str, tuple[int, ...]], ...] = (
    {"kick": (0,), "snare": (4, 8), "hat": (0, 2, 4, 6, 8, 10)},
    {"kick": (0, 6), "snare": (4, 10), "hat": (0, 2, 4, 6, 8, 10)},
)
_DRUM_KEYS = {
    "kick": _KICK, "snare": _SNARE, "ghost": _SNARE, "side": _SIDE_STICK, "hat": _HAT_CLOSED,
    "open": _HAT_OPEN, "pedal": _HAT_PEDAL,
}  # fmt: skip
_DRUM_LEVELS = {
    "kick": 105, "snare": 100, "ghost": 45, "side": 85, "hat": 70, "open": 80, "pedal": 60,
}  # fmt: skip


def drums_part(song: Song, rng: np.random.Generator) -> list[Note]:
    """Kick, snare, toms and hi-hat: one groove per clip with extra kicks, ghost notes and a tom
    fill closing every fourth bar. No crash, ride, splash or china (those are ``cymbals``).

    Parameters
    ----------
    song : Song
        The clip's time grid and harmony; notes cover all of its ``n_bars`` bars.
    rng : np.random.Generator
        The clip's generator.

    Returns
    -------
    list of Note
        In beats from the start of the piece.
    """
    grooves = _GROOVES_4 if song.beats_per_bar == 4 else _GROOVES_3
    groove = pick(rng, grooves)
    steps_per_bar = 4 * song.beats_per_bar
    step_beats = 0.25
    notes = []
    for bar in range(song.n_bars):
        bar_beat = bar * song.beats_per_bar
        fill_from = steps_per_bar - 8 if bar % 4 == 3 and rng.random() < 0.8 else steps_per_bar
        for part, steps in groove.items():
            for step in steps:
                if step >= fill_from and part != "hat":
                    continue
                accent = 8 if step % 4 == 0 else 0
                notes.append(
                    Note(
                        bar_beat + step * step_beats,
                        0.2,
                        _DRUM_KEYS[part],
                        random_velocity(rng, _DRUM_LEVELS[part] + accent),
                    )
                )
        for step in range(steps_per_bar):
            if step < fill_from and step % 2 == 1 and rng.random() < 0.06:
                notes.append(
                    Note(bar_beat + step * step_beats, 0.2, _KICK, random_velocity(rng, 85))
                )
        if fill_from < steps_per_bar:
            toms = _TOMS[int(rng.integers(2)) :]
            for i, step in enumerate(range(fill_from, steps_per_bar)):
                key = _SNARE if rng.random() < 0.2 else toms[i * len(toms) // 8]
                notes.append(
                    Note(bar_beat + step * step_beats, 0.2, key, random_velocity(rng, 90 + i * 2))
                )
    return notes


def cymbals_part(song: Song, rng: np.random.Generator) -> list[Note]:
    """Crash, ride, splash and china: crashes on phrase downbeats plus a ride pattern or
    syncopated accents.

    Parameters
    ----------
    song : Song
        The clip's time grid and harmony; notes cover all of its ``n_bars`` bars.
    rng : np.random.Generator
        The clip's generator.

    Returns
    -------
    list of Note
        In beats from the start of the piece.
    """
    style = pick(rng, ["ride", "crashes", "accents"])
    crash_every = pick(rng, [2, 4]) if style == "ride" else pick(rng, [1, 2])
    crash = pick(rng, _CRASHES)
    ride_steps = (
        (0.0, 1.0, 2.0, 3.0) if rng.random() < 0.5 else (0.0, 1.0, 1.67, 2.0, 3.0, 3.67)
    )  # straight quarters or a swung jazz ride
    notes = []
    for bar in range(song.n_bars):
        bar_beat = bar * song.beats_per_bar
        if bar % crash_every == 0:
            notes.append(Note(bar_beat, 2.0, crash, random_velocity(rng, 105)))
        if style == "ride":
            for i, offset in enumerate(o for o in ride_steps if o < song.beats_per_bar):
                if bar % crash_every == 0 and i == 0:
                    continue
                key = _RIDE_BELL if rng.random() < 0.1 else _RIDE
                notes.append(
                    Note(
                        bar_beat + offset,
                        0.5,
                        key,
                        random_velocity(rng, 85 if offset % 1 == 0 else 70),
                    )
                )
        elif style == "accents" and rng.random() < 0.7:
            offset = pick(rng, [1.5, 2.5, 3.0, 3.5]) % song.beats_per_bar
            key = pick(rng, [_SPLASH, _CHINA, crash])
            notes.append(Note(bar_beat + offset, 1.0, key, random_velocity(rng, 95)))
    return notes
