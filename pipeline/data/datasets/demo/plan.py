"""Which clips the demo has: their instruments, known labels, splits and render seeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.datasets.demo.instruments import DEMO_CLASSES

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
    """Generator of clip ``index``: the ``index``-th child of ``default_rng(seed).spawn(...)``.

    Parameters
    ----------
    seed : int
        The dataset's seed.
    index : int
        The clip's position, from 0.

    Returns
    -------
    np.random.Generator
        The same for a given (seed, index), whatever the number of clips.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def plan_clip(index: int, *, seed: int, known_negative_p: float = KNOWN_NEGATIVE_P) -> ClipPlan:
    """The instruments, known labels, split and render seed of clip ``index``.

    Parameters
    ----------
    index : int
        The clip's position, from 0; it leads with class ``index % 18``.
    seed : int
        The dataset's seed.
    known_negative_p : float
        Probability that an absent class is a known negative rather than unknown.

    Returns
    -------
    ClipPlan
        Clip ID ``demo-<index:06d>``, 1–3 instruments in :data:`DEMO_CLASSES` order.
    """
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
    """The plans of clips ``0 .. n_clips - 1`` (see :func:`plan_clip`).

    Parameters
    ----------
    n_clips : int
        Number of clips.
    seed : int
        The dataset's seed.
    known_negative_p : float
        Probability that an absent class is a known negative rather than unknown.

    Returns
    -------
    list of ClipPlan
        In clip order.
    """
    return [plan_clip(i, seed=seed, known_negative_p=known_negative_p) for i in range(n_clips)]


def label_arrays(plans: Sequence[ClipPlan]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and label mask of ``plans`` over :data:`DEMO_CLASSES`.

    Parameters
    ----------
    plans : sequence of ClipPlan, length N
        The clips.

    Returns
    -------
    labels : np.ndarray, shape (N, C), int8
        1 where the instrument plays, else 0.
    mask : np.ndarray, shape (N, C), bool
        True where the label is known.
    """
    shape = (len(plans), len(DEMO_CLASSES))
    labels = np.array([[c in p.instruments for c in DEMO_CLASSES] for p in plans], dtype=np.int8)
    mask = np.array([p.known for p in plans], dtype=bool)
    return labels.reshape(shape), mask.reshape(shape)
