"""Pitched parts: bass lines, chords (block, pad, arpeggio), banjo rolls and melodies.

Every writer draws from the clip's generator in a fixed order, so a seed gives the same notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from pipeline.data.datasets.demo.music import Note, Song, pick, random_velocity


def _keys_in(pcs: Sequence[int], *, low_key: int, high_key: int) -> list[int]:
    """All MIDI keys in ``[low_key, high_key]`` whose pitch class is in ``pcs``, ascending."""
    return [k for k in range(low_key, high_key + 1) if k % 12 in set(pcs)]


def _nearest(keys: Sequence[int], target: float) -> int:
    return min(keys, key=lambda k: (abs(k - target), k))


def _root_key(song: Song, bar: int, *, low_key: int, high_key: int, target: float) -> int:
    return _nearest(_keys_in(song.chord_pcs(bar)[:1], low_key=low_key, high_key=high_key), target)


def bass_part(song: Song, rng: np.random.Generator, *, register: tuple[int, int]) -> list[Note]:
    """Roots and fifths in the low register with one rhythm figure per clip.

    Parameters
    ----------
    song : Song
        The clip's time grid and harmony; notes cover all of its ``n_bars`` bars.
    rng : np.random.Generator
        The clip's generator.
    register : (int, int)
        Lowest and highest MIDI key of the instrument, inclusive.

    Returns
    -------
    list of Note
        In beats from the start of the piece.
    """
    low, high = register
    figures = (  # (beat offset, length in beats, interval above the root)
        ((0.0, 1.0, 0), (1.0, 1.0, 0), (2.0, 1.0, 7), (3.0, 1.0, 0)),
        ((0.0, 2.0, 0), (2.0, 2.0, 7)),
        ((0.0, 1.5, 0), (1.5, 0.5, 0), (2.0, 1.0, 7), (3.0, 1.0, 12)),
        tuple((i * 0.5, 0.5, 0) for i in range(8)),
        ((0.0, 0.75, 0), (0.75, 0.25, 0), (1.5, 1.0, 7), (3.0, 0.5, 10), (3.5, 0.5, 12)),
    )
    figure = pick(rng, figures)
    base_velocity = rng.uniform(80, 105)
    notes = []
    for bar in range(song.n_bars):
        root = _root_key(song, bar, low_key=low, high_key=high - 12, target=low + 9)
        for offset, length, interval in figure:
            if offset >= song.beats_per_bar:
                continue
            length = min(length, song.beats_per_bar - offset)
            velocity = random_velocity(rng, base_velocity + (8 if offset == 0 else 0))
            beat = bar * song.beats_per_bar + offset
            notes.append(Note(beat, 0.92 * length, root + interval, velocity))
    return notes


def _voicing(pcs: Sequence[int], *, low_key: int, high_key: int, center_key: int) -> list[int]:
    """A close-position chord: the chord tones upward from the root nearest ``center_key``."""
    root = _nearest(_keys_in(pcs[:1], low_key=low_key, high_key=high_key - 7), center_key - 4)
    keys = [root]
    for pc in pcs[1:]:
        keys.append(keys[-1] + (pc - keys[-1]) % 12)
    return [k for k in keys if k <= high_key]


def chord_part(
    song: Song,
    rng: np.random.Generator,
    *,
    register: tuple[int, int],
    style: Literal["block", "pad", "arpeggio"],
    left_hand: bool = False,
    strum_s: float = 0.0,
) -> list[Note]:
    """Accompaniment: ``block`` rhythms, sustained ``pad`` chords or ``arpeggio`` figures.

    Parameters
    ----------
    song : Song
        The clip's time grid and harmony; notes cover all of its ``n_bars`` bars.
    rng : np.random.Generator
        The clip's generator.
    register : (int, int)
        Lowest and highest MIDI key of the instrument, inclusive.
    style : {"block", "pad", "arpeggio"}
        Rhythmic chords, one held chord per bar, or broken chords.
    left_hand : bool
        Add a held bass root per bar (the piano's left hand).
    strum_s : float
        Delay in seconds between the notes of a chord, as a strum (off-beats strum down).

    Returns
    -------
    list of Note
        In beats from the start of the piece.
    """
    low, high = register
    center = (low + high) // 2
    seventh = rng.random() < 0.3
    rhythms = (  # onsets in beats within a 4-beat bar
        (0.0, 2.0),
        (0.0, 1.0, 2.0, 3.0),
        (0.0, 1.5, 2.5, 3.5),
        (0.0, 0.5, 1.5, 2.0, 3.0, 3.5),
        (0.0,),
    )
    rhythm = pick(rng, rhythms) if style == "block" else (0.0,)
    arp_step = 0.5 if song.tempo_bpm < 120 or rng.random() < 0.5 else 1.0
    base_velocity = rng.uniform(65, 95)
    notes: list[Note] = []
    for bar in range(song.n_bars):
        bar_beat = bar * song.beats_per_bar
        voicing = _voicing(
            song.chord_pcs(bar, seventh=seventh), low_key=low, high_key=high, center_key=center
        )
        if left_hand:
            root = _root_key(song, bar, low_key=36, high_key=52, target=43)
            notes.append(
                Note(bar_beat, song.beats_per_bar * 0.95, root, random_velocity(rng, base_velocity))
            )
        if style == "arpeggio":
            tones = [*voicing, voicing[0] + 12, *voicing[1:-1][::-1]]
            n_steps = int(song.beats_per_bar / arp_step)
            for i in range(n_steps):
                key = tones[i % len(tones)]
                notes.append(
                    Note(
                        bar_beat + i * arp_step,
                        arp_step * 1.6,
                        key,
                        random_velocity(rng, base_velocity - 5),
                    )
                )
            continue
        onsets = [o for o in rhythm if o < song.beats_per_bar]
        for i, onset in enumerate(onsets):
            nxt = onsets[i + 1] if i + 1 < len(onsets) else song.beats_per_bar
            length = (nxt - onset) * (0.98 if style == "pad" else 0.85)
            accent = 10 if onset == 0 else 0
            # Upstrokes on off-beats play the strings top to bottom.
            order = voicing if onset % 1 == 0 else voicing[::-1]
            for j, key in enumerate(order):
                beat = bar_beat + onset + j * strum_s / song.beat_s
                notes.append(Note(beat, length, key, random_velocity(rng, base_velocity + accent)))
    return notes


def banjo_part(song: Song, rng: np.random.Generator, *, register: tuple[int, int]) -> list[Note]:
    """Rolls: a repeating picking pattern over the chord tones in eighths or sixteenths.

    Parameters
    ----------
    song : Song
        The clip's time grid and harmony; notes cover all of its ``n_bars`` bars.
    rng : np.random.Generator
        The clip's generator.
    register : (int, int)
        Lowest and highest MIDI key of the instrument, inclusive.

    Returns
    -------
    list of Note
        In beats from the start of the piece.
    """
    low, high = register
    step = 0.25 if song.tempo_bpm < 100 else 0.5
    patterns = ((0, 1, 2, 0, 1, 2, 0, 1), (0, 2, 1, 2, 0, 2, 1, 2), (2, 1, 0, 2, 1, 0, 2, 1))
    pattern = pick(rng, patterns)
    base_velocity = rng.uniform(70, 95)
    notes = []
    for bar in range(song.n_bars):
        voicing = _voicing(song.chord_pcs(bar), low_key=low, high_key=high, center_key=low + 12)
        for i in range(int(song.beats_per_bar / step)):
            key = voicing[pattern[i % len(pattern)] % len(voicing)]
            velocity = random_velocity(rng, base_velocity + (10 if i % 4 == 0 else 0))
            notes.append(Note(bar * song.beats_per_bar + i * step, step * 2.0, key, velocity))
    return notes


# Note values (beats) and their weights for melodic parts: quick, moderate and slow lines.
_MELODY_RHYTHMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "quick": ((0.5, 1.0, 1.5, 2.0, 0.25), (0.35, 0.35, 0.1, 0.1, 0.1)),
    "moderate": ((0.5, 1.0, 1.5, 2.0, 3.0), (0.2, 0.4, 0.15, 0.2, 0.05)),
    "slow": ((1.0, 2.0, 3.0, 4.0), (0.3, 0.4, 0.1, 0.2)),
}


def melody_part(
    song: Song,
    rng: np.random.Generator,
    *,
    register: tuple[int, int],
    pace: Literal["quick", "moderate", "slow"],
    legato: float = 0.9,
) -> list[Note]:
    """Phrases of mostly stepwise motion through the scale, landing on chord tones on strong
    beats and ending on a long chord tone, separated by rests.

    Parameters
    ----------
    song : Song
        The clip's time grid and harmony; notes cover all of its ``n_bars`` bars.
    rng : np.random.Generator
        The clip's generator.
    register : (int, int)
        Lowest and highest MIDI key of the instrument, inclusive.
    pace : {"quick", "moderate", "slow"}
        The note values drawn (see ``_MELODY_RHYTHMS``); slow phrases are twice as long.
    legato : float
        Sounding share of each note value.

    Returns
    -------
    list of Note
        In beats from the start of the piece.
    """
    low, high = register
    scale = _keys_in(song.scale_pcs(), low_key=low, high_key=high)
    values, weights = _MELODY_RHYTHMS[pace]
    phrase_beats = 2 * song.beats_per_bar * (2 if pace == "slow" else 1)
    moves, move_p = (-3, -2, -1, 0, 1, 2, 3), (0.03, 0.12, 0.33, 0.08, 0.3, 0.11, 0.03)
    index = scale.index(_nearest(scale, (low + high) / 2 + rng.uniform(-4, 4)))
    base_velocity = rng.uniform(70, 100)
    total_beats = song.n_bars * song.beats_per_bar
    beat = pick(rng, [0.0, 0.5, 1.0])
    notes = []
    while beat < total_beats:
        phrase_end = beat + phrase_beats - pick(rng, [0.5, 1.0, 2.0])
        while beat < phrase_end:
            length = min(float(rng.choice(values, p=weights)), phrase_end - beat)
            index = int(np.clip(index + rng.choice(moves, p=move_p), 0, len(scale) - 1))
            bar = int(beat // song.beats_per_bar)
            if beat % 2 == 0 or beat + length >= phrase_end:  # strong beat or phrase ending
                chord = _keys_in(song.chord_pcs(bar), low_key=low, high_key=high)
                index = scale.index(_nearest(chord, scale[index]))
            arc = 8.0 * np.sin(np.pi * (1 - (phrase_end - beat) / phrase_beats))
            notes.append(
                Note(beat, length * legato, scale[index], random_velocity(rng, base_velocity + arc))
            )
            beat += length
        beat = np.ceil(beat * 2) / 2 + pick(rng, [0.5, 1.0, 1.5, 2.0])
    return notes
