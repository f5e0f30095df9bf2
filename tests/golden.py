"""Golden outputs: what each encoder returned for fixed weights and fixed audio.

A store's fingerprint holds each encoder's ``output_version`` instead of a hash of its code, so
that moving or re-commenting code keeps caches valid. The price is that a change to the values
must raise that version by hand; these files are the guard. For every teacher (random weights
in the package's own format, or the real weights a wheel ships) and every mel front end,
``tests/data/golden/<name>.npz`` holds, per clip of :func:`golden_audio`, the output's shape, its
first dimensions in full and a fixed random projection of every frame, together with the
``output_version`` they were made with.

After an intended change of outputs: raise ``output_version``, then rewrite the files with

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
LEADING_DIMS = 8
PROJECTED_DIMS = 16
# Relative to the spread of the stored values: far above float32 differences between machines
# and BLAS builds (about 1e-6), far below what any change of the computation gives.
TOLERANCE = 1e-3
ENCODERS = (
    "musicnn",
    "aisfx",
    "panns",
    "vggish",
    "openl3",
    "passt",
    "hear",
    "mel-cp_resnet",
    "mel-mobile_fcn",
)


def golden_audio(sample_rate_hz: int) -> list[np.ndarray]:
    """Two mono float32 clips (4.2 s and 3.3 s, above musicnn's 3 s patch): chords plus noise.

    Computed at the encoder's own rate, so that no resampler enters the comparison.
    """
    clips = []
    for k, (seconds, base_hz) in enumerate(((4.2, 220.0), (3.3, 330.0))):
        t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
        tone = sum(np.sin(2 * np.pi * base_hz * r * t) for r in (1.0, 1.25, 1.5)) / 3
        noise = np.random.default_rng(k).standard_normal(t.size)
        clips.append((0.4 * tone * (1 + t) / (1 + t[-1]) + 0.02 * noise).astype(np.float32))
    return clips


def build_encoder(name: str, folder: Path) -> Any:
    """The encoder ``name`` on the CPU, with fixed weights written under ``folder``."""
    from stand_ins import WRITE_WEIGHTS

    from pipeline.extract.frontends import create_frontend
    from pipeline.teachers import create_teacher

    torch.manual_seed(0)
    if name.startswith("mel-"):
        return create_frontend(name)
    if name in WRITE_WEIGHTS:
        return create_teacher(name, weights=WRITE_WEIGHTS[name](folder / name))
    if name == "hear":
        return _hear_teacher(folder / "hear")
    return create_teacher(name)  # musicnn, aisfx: the real weights their wheels ship


def _hear_teacher(folder: Path) -> Any:
    from test_hear import TINY_HEAR

    from pipeline.teachers import create_teacher

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "golden_hear.py").write_text(TINY_HEAR)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    module = __import__("golden_hear")
    torch.manual_seed(1)
    model = module.TinyModel()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    torch.save(model.state_dict(), folder / "tiny.pt")
    return create_teacher("hear:golden_hear", weights=folder / "tiny.pt")


def summarise(outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per clip: shape, the first :data:`LEADING_DIMS` dimensions and a projection of every frame.

    The projection matrix (D, 16) comes from a fixed seed, so a change anywhere in a frame moves
    the projection.
    """
    summary: dict[str, np.ndarray] = {}
    for k, out in enumerate(outputs):
        out = np.asarray(out, dtype=np.float64)
        projection = np.random.default_rng(1234).standard_normal((out.shape[1], PROJECTED_DIMS))
        summary[f"shape_{k}"] = np.asarray(out.shape)
        summary[f"leading_{k}"] = out[:, :LEADING_DIMS]
        summary[f"projected_{k}"] = out @ projection / np.sqrt(out.shape[1])
    return summary


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name.replace(':', '-')}.npz"


def write_golden(name: str, encoder: Any) -> Path:
    """Record ``encoder``'s outputs on :func:`golden_audio` with its output version."""
    outputs = encoder.embed(golden_audio(encoder.sample_rate_hz))
    version = encoder.fingerprint()["output_version"]
    path = golden_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, output_version=np.asarray(version), **summarise(outputs))
    return path


def golden_problems(name: str, encoder: Any) -> list[str]:
    """Why ``encoder`` disagrees with its golden file; empty when it agrees."""
    golden = np.load(golden_path(name))
    version = encoder.fingerprint()["output_version"]
    recorded = int(golden["output_version"])
    if version != recorded:
        return [
            f"{name}: output_version is {version} but the golden outputs were made with "
            f"{recorded}; after checking the change was intended, rewrite them "
            "(UPDATE_GOLDEN=1, see tests/golden.py)"
        ]
    now = summarise(encoder.embed(golden_audio(encoder.sample_rate_hz)))
    problems = []
    for key, then in golden.items():
        if key == "output_version":
            continue
        if key.startswith("shape_"):
            if not np.array_equal(now[key], then):
                problems.append(f"{key}: {tuple(now[key])} instead of {tuple(then)}")
            continue
        if now[key].shape != then.shape or then.size == 0:
            continue  # reported by the shape
        scale = max(float(np.std(then)), 1e-12)
        worst = float(np.max(np.abs(now[key] - then), initial=0.0)) / scale
        if not worst <= TOLERANCE:
            problems.append(f"{key}: differs by {worst:.3g} of its spread")
    if problems:
        return [
            f"{name}: the outputs changed while output_version stayed {version} "
            f"({'; '.join(problems)}). If the change is intended, raise output_version "
            "(stores made before become stale) and rewrite the golden files."
        ]
    return []


def update_requested() -> bool:
    return os.environ.get("UPDATE_GOLDEN") == "1"
