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

The package: :mod:`.music` (time grid, harmony, notes), :mod:`.parts` and :mod:`.drums` (what
each instrument plays), :mod:`.instruments` (classes, presets), :mod:`.render` (synthesis,
mixing, the OGG files) and :mod:`.plan` (clips, labels, splits, seeds); this module registers
the ``demo`` dataset source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from joblib import Parallel, delayed
from tqdm import tqdm

from pipeline.data.datasets import DATASETS
from pipeline.data.datasets.demo.instruments import DEMO_CLASSES, OPENMIC_CLASSES, compose_part
from pipeline.data.datasets.demo.music import random_song
from pipeline.data.datasets.demo.plan import (
    KNOWN_NEGATIVE_P,
    ClipPlan,
    label_arrays,
    plan_clips,
)
from pipeline.data.datasets.demo.render import (
    DURATION_S,
    SR_HZ,
    is_current,
    render_instruments,
    write_clip,
)
from pipeline.data.manifest import Manifest, make_manifest

__all__ = [
    "DEMO_CLASSES",
    "DURATION_S",
    "KNOWN_NEGATIVE_P",
    "OPENMIC_CLASSES",
    "SR_HZ",
    "compose_part",
    "demo",
    "label_arrays",
    "plan_clips",
    "random_song",
    "render_instruments",
]


def _render_missing(todo: Sequence[tuple[ClipPlan, Path]], *, jobs: int) -> None:
    """Write every (plan, path) of ``todo`` on ``jobs`` processes, with a progress bar."""
    tasks = (delayed(write_clip)(plan, path) for plan, path in todo)
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks)
    for _ in tqdm(results, total=len(todo), desc="demo: rendering audio", unit="clip"):
        pass


@DATASETS.register
def demo(
    *, out_dir: Path, clips: int = 720, seed: int = 2022, jobs: int = -1, **_: object
) -> Manifest:
    """Render (or reuse) ``clips`` demo clips under ``out_dir/audio`` and return their manifest.

    Files that already hold the right clip are kept, so a rerun renders nothing.

    Parameters
    ----------
    out_dir : Path
        The dataset's folder; the clips go to ``out_dir/audio/<clip_id>.ogg``.
    clips : int
        Number of clips, at least 1.
    seed : int
        The one seed everything derives from.
    jobs : int
        Rendering processes (joblib's ``n_jobs``: -1 for one per core).

    Returns
    -------
    Manifest
        Named ``demo``, with the classes :data:`DEMO_CLASSES`.

    Raises
    ------
    ValueError
        If ``clips`` is below 1.
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
