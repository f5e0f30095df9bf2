"""The demo's classes and how each is played: General MIDI presets, registers and part writers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.data.datasets.demo.drums import cymbals_part, drums_part
from pipeline.data.datasets.demo.music import Note, Song, TimedNote, pick, place_notes
from pipeline.data.datasets.demo.parts import banjo_part, bass_part, chord_part, melody_part

OPENMIC_CLASSES: tuple[str, ...] = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)  # fmt: skip
DEMO_CLASSES: tuple[str, ...] = tuple(
    c for c in OPENMIC_CLASSES if c not in ("mandolin", "ukulele")
)

# General MIDI programs (0-based) in TimGM6mb for each class.
_PROGRAMS: dict[str, tuple[int, ...]] = {
    "accordion": (21, 23),
    "banjo": (105,),
    "bass": (32, 33, 34, 35),
    "cello": (42,),
    "clarinet": (71,),
    "flute": (73,),
    "guitar": (24, 25, 26, 27),
    "mallet_percussion": (9, 11, 12, 13),
    "organ": (16, 17, 18, 19),
    "piano": (0, 1),
    "saxophone": (64, 65, 66),
    "synthesizer": (80, 81, 89, 90, 94),
    "trombone": (57,),
    "trumpet": (56,),
    "violin": (40,),
    "voice": (52, 53),
}
_SYNTH_PADS = frozenset({89, 90, 94})

# Playable range (MIDI keys, inclusive) of each pitched part.
_REGISTERS: dict[str, tuple[int, int]] = {
    "accordion": (53, 77),
    "banjo": (55, 79),
    "bass": (28, 52),
    "cello": (36, 64),
    "clarinet": (52, 82),
    "flute": (67, 93),
    "guitar": (48, 72),
    "mallet_percussion": (60, 91),
    "organ": (48, 76),
    "piano": (48, 76),
    "saxophone": (54, 80),
    "synthesizer": (60, 84),
    "trombone": (40, 65),
    "trumpet": (58, 82),
    "violin": (60, 91),
    "voice": (55, 77),
}


@dataclass(frozen=True)
class Part:
    """A rendered part: its notes and the soundfont preset that plays them."""

    notes: tuple[TimedNote, ...]
    program: int
    is_drums: bool


def compose_part(instrument: str, song: Song, rng: np.random.Generator) -> Part:
    """Choose a preset and write the notes that ``instrument`` plays in ``song``.

    Parameters
    ----------
    instrument : str
        A name from :data:`DEMO_CLASSES`.
    song : Song
        The clip's time grid and harmony.
    rng : np.random.Generator
        The clip's generator; draws the preset, the notes and their timing.

    Returns
    -------
    Part
        The notes in clip time and the preset (the song's drum kit for drums and cymbals).

    Raises
    ------
    ValueError
        If General MIDI has no rendering for ``instrument``.
    """
    if instrument == "drums":
        return Part(tuple(place_notes(drums_part(song, rng), song, rng)), song.drum_kit, True)
    if instrument == "cymbals":
        return Part(tuple(place_notes(cymbals_part(song, rng), song, rng)), song.drum_kit, True)
    if instrument not in _PROGRAMS:
        raise ValueError(
            f"no General MIDI rendering for {instrument!r}; the demo classes are {DEMO_CLASSES}"
        )
    program = pick(rng, _PROGRAMS[instrument])
    register = _REGISTERS[instrument]
    writers: dict[str, Callable[[], list[Note]]] = {
        "bass": lambda: bass_part(song, rng, register=register),
        "banjo": lambda: banjo_part(song, rng, register=register),
        "piano": lambda: chord_part(
            song,
            rng,
            register=register,
            style=pick(rng, ["block", "arpeggio"]),
            left_hand=True,
        ),
        "guitar": lambda: chord_part(
            song,
            rng,
            register=register,
            style=pick(rng, ["block", "block", "arpeggio"]),
            strum_s=float(rng.uniform(0.008, 0.025)),
        ),
        "organ": lambda: chord_part(
            song, rng, register=register, style=pick(rng, ["pad", "block"])
        ),
        "accordion": lambda: chord_part(
            song, rng, register=register, style=pick(rng, ["pad", "block"])
        ),
        "mallet_percussion": lambda: chord_part(song, rng, register=register, style="arpeggio"),
        "synthesizer": lambda: (
            chord_part(song, rng, register=(48, 76), style="pad")
            if program in _SYNTH_PADS
            else melody_part(song, rng, register=register, pace="quick", legato=0.8)
        ),
        "flute": lambda: melody_part(song, rng, register=register, pace="quick"),
        "clarinet": lambda: melody_part(song, rng, register=register, pace="moderate"),
        "saxophone": lambda: melody_part(song, rng, register=register, pace="moderate"),
        "trumpet": lambda: melody_part(song, rng, register=register, pace="moderate", legato=0.8),
        "violin": lambda: melody_part(song, rng, register=register, pace="moderate", legato=0.97),
        "voice": lambda: melody_part(song, rng, register=register, pace="slow", legato=0.95),
        "cello": lambda: melody_part(song, rng, register=register, pace="slow", legato=0.97),
        "trombone": lambda: melody_part(song, rng, register=register, pace="slow", legato=0.9),
    }
    return Part(tuple(place_notes(writers[instrument](), song, rng)), program, False)
