"""The embedded default dataset: OpenMIC-like clips rendered offline from General MIDI.

Each clip is a 10 s excerpt of a short generated piece (tempo, key, mode, chord progression) in
which 1–3 instruments play parts that suit them (bass lines, comping, melodies, beats, …). The
parts are rendered with the General MIDI soundfont that ships with ``pretty_midi`` through
``tinysoundfont``, mixed to mono and written as OGG Vorbis at 32 kHz. Labels follow OpenMIC:
the instruments present are positive, each other class is a known negative with probability
:data:`KNOWN_NEGATIVE_P` and unknown otherwise.

General MIDI has no mandolin or ukulele, so the demo keeps OpenMIC's other 18 classes.

Everything derives from one integer seed: clip ``k`` uses the ``k``-th child of
``numpy.random.default_rng(seed)``, so it is the same whatever the number of clips. Decoded
audio is identical between builds; the files' bytes are not, since libsndfile gives each Ogg
stream a random serial number.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import numpy as np
import soundfile as sf
import tinysoundfont
from joblib import Parallel, delayed
from tqdm import tqdm

from pipeline.data.datasets import register_dataset
from pipeline.data.manifest import Manifest, make_manifest

OPENMIC_CLASSES: tuple[str, ...] = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)  # fmt: skip
DEMO_CLASSES: tuple[str, ...] = tuple(
    c for c in OPENMIC_CLASSES if c not in ("mandolin", "ukulele")
)

_T = TypeVar("_T")

SR_HZ = 32000
DURATION_S = 10.0
KNOWN_NEGATIVE_P = 0.5
# Clip k plays class k % 18 (plus 0–2 random others) and goes to split
# _SPLIT_SLOTS[(k // 18 + k % 18) % 20]. Within every 360 clips, each class leads 20 clips split
# exactly 14/3/3 into train/valid/test; the first 12 clips already cover all three splits.
_SPLIT_SLOTS: tuple[str, ...] = tuple(
    "valid" if i in (2, 9, 15) else "test" if i in (5, 12, 18) else "train" for i in range(20)
)
_INSTRUMENT_COUNT_P = {1: 0.3, 2: 0.4, 3: 0.3}
# Bump when the music or the mixing changes: files written by another version are re-rendered.
GENERATOR_VERSION = 1

_DRUM_CHANNEL = 9
_DRUM_BANK = 128

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
_DRUM_KITS = (0, 8, 16, 24, 25, 32)

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

_KICK, _SNARE, _SIDE_STICK, _CLAP = 36, 38, 37, 39
_HAT_CLOSED, _HAT_PEDAL, _HAT_OPEN = 42, 44, 46
_TOMS = (50, 48, 47, 45, 43, 41)  # high to low
_CRASHES, _RIDE, _RIDE_BELL, _CHINA, _SPLASH = (49, 57), 51, 53, 52, 55

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


def soundfont_path() -> Path:
    """The General MIDI soundfont shipped inside the ``pretty_midi`` package."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo dataset needs pretty_midi (for its TimGM6mb.sf2 soundfont)")
    path = Path(next(iter(spec.submodule_search_locations))) / "TimGM6mb.sf2"
    if not path.is_file():
        raise RuntimeError(f"soundfont missing: {path}")
    return path


@functools.cache
def _soundfont_bytes() -> bytes:
    return soundfont_path().read_bytes()


# ---------------------------------------------------------------------------------------------
# Music
# ---------------------------------------------------------------------------------------------


def random_song(rng: np.random.Generator, *, duration_s: float) -> Song:
    tempo_bpm = float(rng.uniform(70.0, 160.0))
    mode = str(rng.choice(list(_MODES), p=[0.4, 0.1, 0.35, 0.15]))
    options = _PROGRESSIONS[mode]
    beats_per_bar = 3 if rng.random() < 0.15 else 4
    return Song(
        tempo_bpm=tempo_bpm,
        beats_per_bar=beats_per_bar,
        tonic_pc=int(rng.integers(12)),
        mode=mode,
        progression=_pick(rng, options),
        bars_per_chord=2 if tempo_bpm > 130 and rng.random() < 0.5 else 1,
        start_beat=float(rng.integers(0, 4 * beats_per_bar)) + _pick(rng, (0.0, 0.5)),
        duration_s=duration_s,
        drum_kit=_pick(rng, _DRUM_KITS),
    )


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def _keys_in(pcs: Sequence[int], *, low_key: int, high_key: int) -> list[int]:
    """All MIDI keys in ``[low_key, high_key]`` whose pitch class is in ``pcs``, ascending."""
    return [k for k in range(low_key, high_key + 1) if k % 12 in set(pcs)]


def _nearest(keys: Sequence[int], target: float) -> int:
    return min(keys, key=lambda k: (abs(k - target), k))


def _velocity(rng: np.random.Generator, base: float, *, spread: float = 6.0) -> int:
    return int(np.clip(round(base + rng.normal(0.0, spread)), 1, 127))


def place_notes(
    notes: Sequence[Note], song: Song, rng: np.random.Generator, *, jitter_sd_s: float = 0.008
) -> list[TimedNote]:
    """Clip times of ``notes`` with human timing: onsets shifted by clipped Gaussian jitter."""
    limit_s = 2.5 * jitter_sd_s
    jitter = np.clip(rng.normal(0.0, jitter_sd_s, size=len(notes)), -limit_s, limit_s)
    timed = []
    for note, shift_s in zip(notes, jitter.tolist(), strict=True):
        start_s = song.time_s(note.beat) + shift_s
        end_s = start_s + max(note.beats * song.beat_s, 0.03)
        timed.append(TimedNote(start_s, end_s, note.key, note.velocity))
    return timed


def _root_key(song: Song, bar: int, *, low_key: int, high_key: int, target: float) -> int:
    return _nearest(_keys_in(song.chord_pcs(bar)[:1], low_key=low_key, high_key=high_key), target)


def bass_part(song: Song, rng: np.random.Generator, *, register: tuple[int, int]) -> list[Note]:
    """Roots and fifths in the low register with one rhythm figure per clip."""
    low, high = register
    figures = (  # (beat offset, length in beats, interval above the root)
        ((0.0, 1.0, 0), (1.0, 1.0, 0), (2.0, 1.0, 7), (3.0, 1.0, 0)),
        ((0.0, 2.0, 0), (2.0, 2.0, 7)),
        ((0.0, 1.5, 0), (1.5, 0.5, 0), (2.0, 1.0, 7), (3.0, 1.0, 12)),
        tuple((i * 0.5, 0.5, 0) for i in range(8)),
        ((0.0, 0.75, 0), (0.75, 0.25, 0), (1.5, 1.0, 7), (3.0, 0.5, 10), (3.5, 0.5, 12)),
    )
    figure = _pick(rng, figures)
    base_velocity = rng.uniform(80, 105)
    notes = []
    for bar in range(song.n_bars):
        root = _root_key(song, bar, low_key=low, high_key=high - 12, target=low + 9)
        for offset, length, interval in figure:
            if offset >= song.beats_per_bar:
                continue
            length = min(length, song.beats_per_bar - offset)
            velocity = _velocity(rng, base_velocity + (8 if offset == 0 else 0))
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
    """Accompaniment: ``block`` rhythms, sustained ``pad`` chords or ``arpeggio`` figures."""
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
    rhythm = _pick(rng, rhythms) if style == "block" else (0.0,)
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
                Note(bar_beat, song.beats_per_bar * 0.95, root, _velocity(rng, base_velocity))
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
                        _velocity(rng, base_velocity - 5),
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
                notes.append(Note(beat, length, key, _velocity(rng, base_velocity + accent)))
    return notes


def banjo_part(song: Song, rng: np.random.Generator, *, register: tuple[int, int]) -> list[Note]:
    """Rolls: a repeating picking pattern over the chord tones in eighths or sixteenths."""
    low, high = register
    step = 0.25 if song.tempo_bpm < 100 else 0.5
    patterns = ((0, 1, 2, 0, 1, 2, 0, 1), (0, 2, 1, 2, 0, 2, 1, 2), (2, 1, 0, 2, 1, 0, 2, 1))
    pattern = _pick(rng, patterns)
    base_velocity = rng.uniform(70, 95)
    notes = []
    for bar in range(song.n_bars):
        voicing = _voicing(song.chord_pcs(bar), low_key=low, high_key=high, center_key=low + 12)
        for i in range(int(song.beats_per_bar / step)):
            key = voicing[pattern[i % len(pattern)] % len(voicing)]
            velocity = _velocity(rng, base_velocity + (10 if i % 4 == 0 else 0))
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
    beats and ending on a long chord tone, separated by rests."""
    low, high = register
    scale = _keys_in(song.scale_pcs(), low_key=low, high_key=high)
    values, weights = _MELODY_RHYTHMS[pace]
    phrase_beats = 2 * song.beats_per_bar * (2 if pace == "slow" else 1)
    moves, move_p = (-3, -2, -1, 0, 1, 2, 3), (0.03, 0.12, 0.33, 0.08, 0.3, 0.11, 0.03)
    index = scale.index(_nearest(scale, (low + high) / 2 + rng.uniform(-4, 4)))
    base_velocity = rng.uniform(70, 100)
    total_beats = song.n_bars * song.beats_per_bar
    beat = _pick(rng, [0.0, 0.5, 1.0])
    notes = []
    while beat < total_beats:
        phrase_end = beat + phrase_beats - _pick(rng, [0.5, 1.0, 2.0])
        while beat < phrase_end:
            length = min(float(rng.choice(values, p=weights)), phrase_end - beat)
            index = int(np.clip(index + rng.choice(moves, p=move_p), 0, len(scale) - 1))
            bar = int(beat // song.beats_per_bar)
            if beat % 2 == 0 or beat + length >= phrase_end:  # strong beat or phrase ending
                chord = _keys_in(song.chord_pcs(bar), low_key=low, high_key=high)
                index = scale.index(_nearest(chord, scale[index]))
            arc = 8.0 * np.sin(np.pi * (1 - (phrase_end - beat) / phrase_beats))
            notes.append(
                Note(beat, length * legato, scale[index], _velocity(rng, base_velocity + arc))
            )
            beat += length
        beat = np.ceil(beat * 2) / 2 + _pick(rng, [0.5, 1.0, 1.5, 2.0])
    return notes


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
    fill closing every fourth bar. No crash, ride, splash or china (those are ``cymbals``)."""
    grooves = _GROOVES_4 if song.beats_per_bar == 4 else _GROOVES_3
    groove = _pick(rng, grooves)
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
                        _velocity(rng, _DRUM_LEVELS[part] + accent),
                    )
                )
        for step in range(steps_per_bar):
            if step < fill_from and step % 2 == 1 and rng.random() < 0.06:
                notes.append(Note(bar_beat + step * step_beats, 0.2, _KICK, _velocity(rng, 85)))
        if fill_from < steps_per_bar:
            toms = _TOMS[int(rng.integers(2)) :]
            for i, step in enumerate(range(fill_from, steps_per_bar)):
                key = _SNARE if rng.random() < 0.2 else toms[i * len(toms) // 8]
                notes.append(
                    Note(bar_beat + step * step_beats, 0.2, key, _velocity(rng, 90 + i * 2))
                )
    return notes


def cymbals_part(song: Song, rng: np.random.Generator) -> list[Note]:
    """Crash, ride, splash and china: crashes on phrase downbeats plus a ride pattern or
    syncopated accents."""
    style = _pick(rng, ["ride", "crashes", "accents"])
    crash_every = _pick(rng, [2, 4]) if style == "ride" else _pick(rng, [1, 2])
    crash = _pick(rng, _CRASHES)
    ride_steps = (
        (0.0, 1.0, 2.0, 3.0) if rng.random() < 0.5 else (0.0, 1.0, 1.67, 2.0, 3.0, 3.67)
    )  # straight quarters or a swung jazz ride
    notes = []
    for bar in range(song.n_bars):
        bar_beat = bar * song.beats_per_bar
        if bar % crash_every == 0:
            notes.append(Note(bar_beat, 2.0, crash, _velocity(rng, 105)))
        if style == "ride":
            for i, offset in enumerate(o for o in ride_steps if o < song.beats_per_bar):
                if bar % crash_every == 0 and i == 0:
                    continue
                key = _RIDE_BELL if rng.random() < 0.1 else _RIDE
                notes.append(
                    Note(bar_beat + offset, 0.5, key, _velocity(rng, 85 if offset % 1 == 0 else 70))
                )
        elif style == "accents" and rng.random() < 0.7:
            offset = _pick(rng, [1.5, 2.5, 3.0, 3.5]) % song.beats_per_bar
            key = _pick(rng, [_SPLASH, _CHINA, crash])
            notes.append(Note(bar_beat + offset, 1.0, key, _velocity(rng, 95)))
    return notes


@dataclass(frozen=True)
class Part:
    """A rendered part: its notes and the soundfont preset that plays them."""

    notes: tuple[TimedNote, ...]
    program: int
    is_drums: bool


def compose_part(instrument: str, song: Song, rng: np.random.Generator) -> Part:
    """Choose a preset and write the notes that ``instrument`` plays in ``song``."""
    if instrument == "drums":
        return Part(tuple(place_notes(drums_part(song, rng), song, rng)), song.drum_kit, True)
    if instrument == "cymbals":
        return Part(tuple(place_notes(cymbals_part(song, rng), song, rng)), song.drum_kit, True)
    if instrument not in _PROGRAMS:
        raise ValueError(
            f"no General MIDI rendering for {instrument!r}; the demo classes are {DEMO_CLASSES}"
        )
    program = _pick(rng, _PROGRAMS[instrument])
    register = _REGISTERS[instrument]
    writers: dict[str, Callable[[], list[Note]]] = {
        "bass": lambda: bass_part(song, rng, register=register),
        "banjo": lambda: banjo_part(song, rng, register=register),
        "piano": lambda: chord_part(
            song,
            rng,
            register=register,
            style=_pick(rng, ["block", "arpeggio"]),
            left_hand=True,
        ),
        "guitar": lambda: chord_part(
            song,
            rng,
            register=register,
            style=_pick(rng, ["block", "block", "arpeggio"]),
            strum_s=float(rng.uniform(0.008, 0.025)),
        ),
        "organ": lambda: chord_part(
            song, rng, register=register, style=_pick(rng, ["pad", "block"])
        ),
        "accordion": lambda: chord_part(
            song, rng, register=register, style=_pick(rng, ["pad", "block"])
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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _midi_events(
    notes: Sequence[TimedNote], *, sr_hz: int, from_s: float, n_samples: int
) -> list[tuple[int, int, int, int]]:
    """(sample, on?, key, velocity) events of the ``n_samples`` window that starts at clip time
    ``from_s``, sorted; notes starting before the window are dropped.

    A note is cut where the next note of the same key starts, so a note-off never silences a
    later note.
    """
    events = []
    next_start: dict[int, float] = {}
    for note in sorted(notes, key=lambda n: (n.start_s, n.key), reverse=True):
        end_s = min(note.end_s, next_start.get(note.key, np.inf))
        next_start[note.key] = note.start_s
        start = round((note.start_s - from_s) * sr_hz)
        if start < 0 or start >= n_samples:
            continue
        events.append((start, 1, note.key, note.velocity))
        end = round((end_s - from_s) * sr_hz)
        if end < n_samples:
            events.append((max(end, start + 1), 0, note.key, 0))
    return sorted(events)  # at equal times note-offs (0) come before note-ons


def render_part(part: Part, *, n_samples: int, sr_hz: int, preroll_s: float) -> np.ndarray:
    """Synthesise one part alone; mono float32 of ``n_samples`` from clip time 0.

    Synthesis starts ``preroll_s`` earlier (then discarded) so that notes begun before the
    excerpt still sound in it.
    """
    synth = tinysoundfont.Synth(samplerate=sr_hz)
    sfid = synth.sfload(_soundfont_bytes())
    channel = _DRUM_CHANNEL if part.is_drums else 0
    bank = _DRUM_BANK if part.is_drums else 0
    synth.program_select(channel, sfid, bank, part.program, part.is_drums)
    n_preroll = round(preroll_s * sr_hz)
    total = n_preroll + n_samples
    events = _midi_events(part.notes, sr_hz=sr_hz, from_s=-n_preroll / sr_hz, n_samples=total)
    chunks, cursor = [], 0
    for sample, on, key, velocity in events:
        if sample > cursor:
            chunks.append(np.frombuffer(synth.generate(sample - cursor), dtype=np.float32))
            cursor = sample
        if on:
            synth.noteon(channel, key, velocity)
        else:
            synth.noteoff(channel, key)
    if cursor < total:
        chunks.append(np.frombuffer(synth.generate(total - cursor), dtype=np.float32))
    stereo = np.concatenate(chunks).reshape(-1, 2)[n_preroll:]
    return stereo.mean(axis=1, dtype=np.float32)


def active_rms(audio: np.ndarray, *, sr_hz: int, frame_s: float = 0.1) -> float:
    """RMS over the louder half of ``frame_s`` frames: the level while the part plays."""
    frame = max(1, round(frame_s * sr_hz))
    n = len(audio) // frame
    if n == 0:
        return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    energy = np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    loud = np.sort(energy)[n // 2 :]
    return float(np.sqrt(loud.mean()))


def mix_parts(stems: Sequence[np.ndarray], *, rng: np.random.Generator, sr_hz: int) -> np.ndarray:
    """Level each stem to a random −6…0 dB relative loudness, sum, and peak-normalise the mix to
    a random −12…−1 dBFS."""
    mix = np.zeros(len(stems[0]), dtype=np.float64)
    for stem in stems:
        level = active_rms(stem, sr_hz=sr_hz)
        if level > 0:
            mix += stem * (10 ** (rng.uniform(-6.0, 0.0) / 20) / level)
    peak = float(np.max(np.abs(mix)))
    target = 10 ** (rng.uniform(-12.0, -1.0) / 20)
    return (mix * (target / peak if peak > 0 else 0.0)).astype(np.float32)


def render_instruments(
    instruments: Sequence[str],
    *,
    duration_s: float = DURATION_S,
    sr_hz: int = SR_HZ,
    seed: int = 0,
) -> np.ndarray:
    """Mono float32 audio of ``instruments`` (OpenMIC class names) playing one piece together.

    The piece (tempo, key, harmony) and each part are drawn from ``default_rng(seed)``; the same
    arguments give the same samples. Raises ``ValueError`` for names General MIDI cannot play
    (``mandolin``, ``ukulele``), unknown names, repeats or an empty list.
    """
    if not instruments:
        raise ValueError("render_instruments needs at least one instrument")
    unknown = [i for i in instruments if i not in DEMO_CLASSES]
    if unknown:
        raise ValueError(f"cannot render {unknown}; choose from {DEMO_CLASSES}")
    if len(set(instruments)) != len(instruments):
        raise ValueError(f"repeated instruments in {list(instruments)}")
    if duration_s <= 0 or sr_hz <= 0:
        raise ValueError(f"duration_s and sr_hz must be positive, got {duration_s}, {sr_hz}")
    rng = np.random.default_rng(seed)
    song = random_song(rng, duration_s=duration_s)
    n_samples = round(duration_s * sr_hz)
    parts = [compose_part(name, song, rng) for name in instruments]
    # One bar covers every held note (none is longer); the extra second covers release tails.
    preroll_s = song.bar_s + 1.0
    stems = [render_part(p, n_samples=n_samples, sr_hz=sr_hz, preroll_s=preroll_s) for p in parts]
    return mix_parts(stems, rng=rng, sr_hz=sr_hz)


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip except its audio, which ``render_seed`` determines."""

    clip_id: str
    instruments: tuple[str, ...]
    known: tuple[bool, ...]  # per DEMO_CLASSES: label known (always for the instruments present)
    split: str
    render_seed: int

    @property
    def fingerprint(self) -> str:
        """Stored as the file's Vorbis comment, so a rerun can tell whether a file is current."""
        return (
            f"pipeline demo v{GENERATOR_VERSION} seed={self.render_seed} "
            f"instruments={'+'.join(self.instruments)}"
        )


def clip_rng(*, seed: int, index: int) -> np.random.Generator:
    """Generator of clip ``index``: the ``index``-th child of ``default_rng(seed).spawn(...)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def plan_clip(index: int, *, seed: int, known_negative_p: float = KNOWN_NEGATIVE_P) -> ClipPlan:
    rng = clip_rng(seed=seed, index=index)
    n_classes = len(DEMO_CLASSES)
    lead = DEMO_CLASSES[index % n_classes]
    counts, count_p = zip(*_INSTRUMENT_COUNT_P.items(), strict=True)
    n_instruments = int(rng.choice(counts, p=count_p))
    others = [c for c in DEMO_CLASSES if c != lead]
    extra = {str(c) for c in rng.choice(others, size=n_instruments - 1, replace=False)}
    instruments = tuple(c for c in DEMO_CLASSES if c == lead or c in extra)
    known_negative = rng.random(n_classes) < known_negative_p
    known = tuple(
        bool(c in instruments or k) for c, k in zip(DEMO_CLASSES, known_negative, strict=True)
    )
    return ClipPlan(
        clip_id=f"demo-{index:06d}",
        instruments=instruments,
        known=known,
        split=_SPLIT_SLOTS[(index // n_classes + index % n_classes) % len(_SPLIT_SLOTS)],
        render_seed=int(rng.integers(2**63)),
    )


def plan_clips(
    n_clips: int, *, seed: int, known_negative_p: float = KNOWN_NEGATIVE_P
) -> list[ClipPlan]:
    return [plan_clip(i, seed=seed, known_negative_p=known_negative_p) for i in range(n_clips)]


def label_arrays(plans: Sequence[ClipPlan]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) int8 labels (1 = present) and (N, C) bool mask (True = known) over DEMO_CLASSES."""
    shape = (len(plans), len(DEMO_CLASSES))
    labels = np.array([[c in p.instruments for c in DEMO_CLASSES] for p in plans], dtype=np.int8)
    mask = np.array([p.known for p in plans], dtype=bool)
    return labels.reshape(shape), mask.reshape(shape)


def is_current(path: Path, plan: ClipPlan, *, sr_hz: int = SR_HZ) -> bool:
    """Whether ``path`` is a complete rendering of ``plan`` by this generator version."""
    try:
        with sf.SoundFile(path) as f:
            return (
                f.samplerate == sr_hz
                and f.channels == 1
                and f.frames == round(DURATION_S * sr_hz)
                and f.comment == plan.fingerprint
            )
    except (OSError, RuntimeError):
        return False


def write_clip(plan: ClipPlan, path: Path, *, sr_hz: int = SR_HZ) -> Path:
    """Render ``plan`` and write it as mono OGG Vorbis, atomically (temporary name + rename)."""
    audio = render_instruments(
        plan.instruments, duration_s=DURATION_S, sr_hz=sr_hz, seed=plan.render_seed
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with sf.SoundFile(
            tmp, "w", samplerate=sr_hz, channels=1, format="OGG", subtype="VORBIS"
        ) as f:
            f.comment = plan.fingerprint
            f.write(audio)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _render_missing(todo: Sequence[tuple[ClipPlan, Path]], *, jobs: int) -> None:
    tasks = (delayed(write_clip)(plan, path) for plan, path in todo)
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks)
    for _ in tqdm(results, total=len(todo), desc="demo: rendering audio", unit="clip"):
        pass


@register_dataset("demo")
def demo(
    *, out_dir: Path, clips: int = 720, seed: int = 2022, jobs: int = -1, **_: object
) -> Manifest:
    """Render (or reuse) ``clips`` demo clips under ``out_dir/audio`` and return their manifest.

    Files that already hold the right clip are kept, so a rerun renders nothing.
    """
    if clips < 1:
        raise ValueError(f"clips must be at least 1, got {clips}")
    audio_dir = Path(out_dir) / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_clips(clips, seed=seed)
    paths = [audio_dir / f"{p.clip_id}.ogg" for p in plans]
    todo = [(p, path) for p, path in zip(plans, paths, strict=True) if not is_current(path, p)]
    if todo:
        _render_missing(todo, jobs=jobs)
    labels, mask = label_arrays(plans)
    return make_manifest(
        "demo",
        clip_ids=[p.clip_id for p in plans],
        paths=paths,
        splits=[p.split for p in plans],
        classes=DEMO_CLASSES,
        labels=labels,
        mask=mask,
        durations_s=[DURATION_S] * len(plans),
    )
