"""Stand-ins for what the end-to-end tests cannot download: a miniature OpenMIC-2018 release with
real audio, and random weights for the paper's four teachers in each package's own file format.

Each ``write_*_weights`` saves a file that the teacher's loader accepts as the published one
(the formats as in tests/test_<teacher>.py) and returns its path, to give to
``pipeline extract ... --weights PATH``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

OPENMIC_CLASSES = [
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
]  # fmt: skip
OPENMIC_SAMPLE_RATE = 44100  # the release's ogg files are 44.1 kHz


def openmic_keys(n: int) -> list[str]:
    """Keys shaped like the release's (``<6-digit id>_<offset>``), spread over folders, sorted
    (the release's ``sample_key`` order)."""
    return sorted(f"{(i * 7919) % 1_000_000:06d}_{i * 3840}" for i in range(1, n + 1))


def _clip(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """A few sine tones over noise, with a slow amplitude envelope: something every teacher
    and front end embeds differently from clip to clip."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.05 * rng.standard_normal(len(t))
    for hz in rng.uniform(80, 4000, size=3):
        wave += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6.3))
    wave *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t)
    return wave.astype(np.float32)


def write_openmic_release(
    root: Path,
    *,
    n_train: int = 30,
    n_test: int = 8,
    seconds: float = 10.0,
    sample_rate: int = OPENMIC_SAMPLE_RATE,
    seed: int = 0,
) -> dict[str, list[str]]:
    """An unpacked OpenMIC-2018 release in the real layout (see pipeline/datasets/openmic.py):
    ``openmic-2018.npz``, ``class-map.json``, ``partitions/split01_{train,test}.csv`` and
    ``audio/<key[:3]>/<key>.ogg`` (Vorbis, mono, ``seconds`` long).

    Labels: ``Y_true`` in {0, 0.2, 0.5, 0.8, 1} with most of ``Y_mask`` set, and every class
    given one known positive and one known negative in each split, so that every split has
    something to score. Returns the keys of each split ("train", "valid", "test"), the
    validation keys drawn as the adapter draws them (``Random(2022)``, fraction 0.15).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    keys = openmic_keys(n_train + n_test)
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0.0, 0.2, 0.5, 0.8, 1.0], size=(len(keys), len(OPENMIC_CLASSES)))
    y_mask = rng.random(y_true.shape) < 0.8
    shuffled = list(keys)
    random.Random(seed).shuffle(shuffled)
    train, test = sorted(shuffled[:n_train]), sorted(shuffled[n_train:])
    draws = random.Random(2022)  # pipeline.data.datasets.openmic.validation_keys, spelled out
    valid = [k for k in train if draws.uniform(0.0, 1.0) < 0.15]
    splits = {"train": [k for k in train if k not in valid], "valid": valid, "test": test}
    for members in splits.values():
        rows = [keys.index(k) for k in members]
        if len(rows) >= 2:
            y_true[rows[0]], y_mask[rows[0]] = 1.0, True
            y_true[rows[1]], y_mask[rows[1]] = 0.0, True
    np.savez(
        root / "openmic-2018.npz",
        X=rng.integers(0, 256, size=(len(keys), 10, 128), dtype=np.int64),
        Y_true=y_true,
        Y_mask=y_mask,
        sample_key=np.array(keys, dtype=object),
    )
    (root / "class-map.json").write_text(json.dumps({c: i for i, c in enumerate(OPENMIC_CLASSES)}))
    (root / "partitions").mkdir(parents=True, exist_ok=True)
    (root / "partitions/split01_train.csv").write_text("".join(f"{k}\n" for k in train))
    (root / "partitions/split01_test.csv").write_text("".join(f"{k}\n" for k in test))
    for key in keys:
        path = root / "audio" / key[:3] / f"{key}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        wave = _clip(rng, seconds, sample_rate)
        sf.write(path, wave, sample_rate, format="OGG", subtype="VORBIS")
    return splits


# --- random teacher weights, in the published files' formats -------------------------------------


def _spread_batchnorms(model: torch.nn.Module) -> None:
    """BatchNorm statistics and affine parameters away from their initial 0 / 1."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)


def write_vggish_weights(folder: Path, seed: int = 0) -> Path:
    """``vggish-10086976.pth`` (the network's state dict) and, beside it, the PCA file
    (numpy float64 ``pca_eigen_vectors`` and ``pca_means``), centred and scaled on a few noise
    patches so that the 8-bit codes spread over 0..255 rather than saturate."""
    from torchvggish import torchvggish as package_module

    from pipeline.teachers.vggish import PCA_FILE, WEIGHTS_FILE

    torch.manual_seed(seed)
    model = package_module._vgg(postprocess=False).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.normal_(0.0, 0.05)
        patches = torch.randn(8, 1, 96, 64, generator=torch.Generator().manual_seed(seed))
        raw = model(patches).double().numpy()
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((128, 128)))
    means = raw.mean(axis=0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / WEIGHTS_FILE)
    scale = max(float((raw - means).std()), 1e-6)
    torch.save({"pca_eigen_vectors": rotation / scale, "pca_means": means}, folder / PCA_FILE)
    return folder / WEIGHTS_FILE


def write_openl3_weights(folder: Path, seed: int = 0) -> Path:
    """``torchopenl3_mel128_music_512.pth.tar``: the mel128/music/512 network's state dict."""
    from pipeline.teachers.openl3 import build_openl3

    torch.manual_seed(seed)
    model = build_openl3("mel128", "music", 512)
    _spread_batchnorms(model)
    path = folder / "torchopenl3_mel128_music_512.pth.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.eval().state_dict(), path)
    return path


def write_passt_weights(folder: Path, seed: int = 0) -> Path:
    """``passt-s-f128-p16-s10-ap.476-swa.pt``: a plain state dict of ``get_basic_model``'s
    network (LayerNorms and position embeddings moved off their initial values)."""
    from pipeline.teachers.passt import WEIGHTS_FILE, build_passt

    torch.manual_seed(seed)
    model = build_passt()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        model.time_new_pos_embed.normal_(0.0, 0.3)
        model.freq_new_pos_embed.normal_(0.0, 0.3)
    path = folder / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_panns_weights(folder: Path, seed: int = 0) -> Path:
    """``Cnn14_mAP=0.431.pth`` as published: ``{"iteration", "model": state dict, "sampler"}``
    (the sampler's state holds numpy arrays, as the real file's does)."""
    from pipeline.teachers.panns import WEIGHTS_FILE, build_cnn14

    torch.manual_seed(seed)
    model = build_cnn14()
    _spread_batchnorms(model)
    sampler = {
        "indexes_per_class": [np.arange(k, k + 3) for k in range(527)],
        "queue": [5, 1],
        "pointers_of_classes": [0] * 527,
    }
    path = folder / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"iteration": 1, "model": model.eval().state_dict(), "sampler": sampler}, path)
    return path


WRITE_WEIGHTS = {
    "vggish": write_vggish_weights,
    "openl3": write_openl3_weights,
    "passt": write_passt_weights,
    "panns": write_panns_weights,
}
