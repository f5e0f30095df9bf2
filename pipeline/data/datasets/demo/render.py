"""Rendering: parts synthesised with the General MIDI soundfont of ``pretty_midi`` through
``tinysoundfont``, mixed to mono, and written as OGG Vorbis."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import tinysoundfont

from pipeline.data.datasets.demo.instruments import DEMO_CLASSES, Part, compose_part
from pipeline.data.datasets.demo.music import TimedNote, random_song
from pipeline.data.datasets.demo.plan import ClipPlan
from pipeline.fileio import atomic_path

SR_HZ = 32000
DURATION_S = 10.0

_DRUM_CHANNEL = 9
_DRUM_BANK = 128


def soundfont_path() -> Path:
    """The General MIDI soundfont shipped inside the ``pretty_midi`` package.

    Returns
    -------
    Path
        ``TimGM6mb.sf2`` in the installed ``pretty_midi`` package.

    Raises
    ------
    RuntimeError
        If ``pretty_midi`` is not installed or lacks the soundfont.
    """
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo dataset needs pretty_midi (for its TimGM6mb.sf2 soundfont)")
    path = Path(next(iter(spec.submodule_search_locations))) / "TimGM6mb.sf2"
    if not path.is_file():
        raise RuntimeError(f"soundfont missing: {path}")
    return path


@functools.cache
def _soundfont_bytes() -> bytes:
    """The soundfont file's bytes, read once per process."""
    return soundfont_path().read_bytes()


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

    Parameters
    ----------
    part : Part
        Notes (clip times in seconds) and preset.
    n_samples : int
        Length of the output in samples.
    sr_hz : int
        Sample rate in Hz.
    preroll_s : float
        Seconds synthesised before clip time 0 and discarded.

    Returns
    -------
    np.ndarray, shape (n_samples,), float32
        The part alone, the soundfont's stereo output averaged to mono.
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
    """RMS over the louder half of ``frame_s`` frames: the level while the part plays.

    Parameters
    ----------
    audio : np.ndarray, shape (n_samples,)
        Mono audio.
    sr_hz : int
        Sample rate in Hz.
    frame_s : float
        Frame length in seconds.

    Returns
    -------
    float
        The RMS (linear amplitude); that of the whole signal when it is shorter than a frame, 0
        for no samples.
    """
    frame = max(1, round(frame_s * sr_hz))
    n = len(audio) // frame
    if n == 0:
        return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    energy = np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    loud = np.sort(energy)[n // 2 :]
    return float(np.sqrt(loud.mean()))


def mix_parts(stems: Sequence[np.ndarray], *, rng: np.random.Generator, sr_hz: int) -> np.ndarray:
    """Level each stem to a random −6…0 dB relative loudness, sum, and peak-normalise the mix to
    a random −12…−1 dBFS.

    Parameters
    ----------
    stems : sequence of np.ndarray, each shape (n_samples,)
        The parts, rendered alone.
    rng : np.random.Generator
        Draws the levels (one per audible stem, then the peak).
    sr_hz : int
        Sample rate in Hz.

    Returns
    -------
    np.ndarray, shape (n_samples,), float32
        The mix.
    """
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
    arguments give the same samples.

    Parameters
    ----------
    instruments : sequence of str
        Distinct names from :data:`DEMO_CLASSES`, at least one.
    duration_s : float
        Length in seconds.
    sr_hz : int
        Sample rate in Hz.
    seed : int
        Seed of the piece, the parts and the mix.

    Returns
    -------
    np.ndarray, shape (round(duration_s * sr_hz),), float32
        Peak between −12 and −1 dBFS.

    Raises
    ------
    ValueError
        For names General MIDI cannot play (``mandolin``, ``ukulele``), unknown names, repeats,
        an empty list, or a duration or rate that is not positive.
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


def is_current(path: Path, plan: ClipPlan, *, sr_hz: int = SR_HZ) -> bool:
    """Whether ``path`` is a complete rendering of ``plan`` by this generator version.

    Parameters
    ----------
    path : Path
        The clip's ``.ogg`` file (it may be missing or damaged).
    plan : ClipPlan
        What the file should hold; compared with the file's Vorbis comment.
    sr_hz : int
        Sample rate in Hz the file should have.

    Returns
    -------
    bool
        True for a mono file of :data:`DURATION_S` seconds at ``sr_hz`` carrying the plan's
        fingerprint.
    """
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
    """Render ``plan`` and write it as mono OGG Vorbis, atomically (temporary name + rename).

    Parameters
    ----------
    plan : ClipPlan
        The clip; its fingerprint becomes the file's Vorbis comment.
    path : Path
        The ``.ogg`` file to write.
    sr_hz : int
        Sample rate in Hz.

    Returns
    -------
    Path
        ``path``, holding :data:`DURATION_S` seconds of audio.
    """
    audio = render_instruments(
        plan.instruments, duration_s=DURATION_S, sr_hz=sr_hz, seed=plan.render_seed
    )
    with (
        atomic_path(path) as tmp,
        sf.SoundFile(tmp, "w", samplerate=sr_hz, channels=1, format="OGG", subtype="VORBIS") as f,
    ):
        f.comment = plan.fingerprint
        f.write(audio)
    return path
