"""Stand-ins for what the end-to-end tests cannot download: a miniature OpenMIC-2018 release with
real audio, and random weights for the paper's four teachers in each package's own file format.

Each ``write_*_weights`` saves a file that the teacher's loader accepts as the published one
and returns its path, to give to ``pipeline extract ... --weights PATH``; ``random_*`` builds
the network it saves, which the teacher's own tests (tests/test_<teacher>.py) compare against.
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
    """An unpacked OpenMIC-2018 release in the real layout (see pipeline/data/datasets/openmic.py):
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
# One copy each: the teachers' own tests (tests/test_<teacher>.py) compare against the networks
# ``random_*`` build, and save them with the ``write_*_weights`` below; the end-to-end tests call
# the writers alone. The same seed gives the same weights.

VGGISH_SAMPLE_RATE = 16000


def _spread_batchnorms(model: torch.nn.Module) -> None:
    """BatchNorm statistics and affine parameters away from their initial 0 / 1."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)


def random_vggish(seed: int = 0) -> torch.nn.Module:
    """The torchvggish package's network (no post-processing) with random He-initialised
    weights, so that its outputs vary from patch to patch; in eval mode."""
    from torchvggish import torchvggish as package_module

    torch.manual_seed(seed)
    model = package_module._vgg(postprocess=False).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.normal_(0.0, 0.05)
    return model


def vggish_calibration_clips() -> list[np.ndarray]:
    """Four 2 s tones (110 Hz to 5 kHz) over noise, at 16 kHz: what the random PCA is centred
    and scaled on."""
    n = 2 * VGGISH_SAMPLE_RATE
    t = np.arange(n) / VGGISH_SAMPLE_RATE
    clips = []
    for seed, hz in enumerate((110, 440, 1800, 5000)):
        noise = 0.1 * np.random.default_rng(seed).standard_normal(n)
        clips.append(
            (0.3 * np.sin(2 * np.pi * hz * t) + noise.astype(np.float32)).astype(np.float32)
        )
    return clips


def random_vggish_pca(network: torch.nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """A random orthogonal PCA in the published file's format (numpy float64
    ``pca_eigen_vectors`` and ``pca_means``), centred and scaled on
    :func:`vggish_calibration_clips` so that the 8-bit codes spread over 0..255 rather than
    saturate."""
    from torchvggish import vggish_input

    patches = torch.cat(
        [
            vggish_input.waveform_to_examples(c, VGGISH_SAMPLE_RATE)
            for c in vggish_calibration_clips()
        ]
    )
    with torch.no_grad():
        raw = network(patches).double().numpy()
    rotation, _ = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((128, 128)))
    means = raw.mean(axis=0)
    scale = max(float((raw - means).std()), 1e-6)
    return {"pca_eigen_vectors": rotation / scale, "pca_means": means}


def write_vggish_weights(
    folder: Path,
    seed: int = 0,
    *,
    network: torch.nn.Module | None = None,
    pca: dict[str, np.ndarray] | None = None,
) -> Path:
    """``vggish-10086976.pth`` (the network's state dict) and, beside it, the PCA file; the
    network and PCA given, or :func:`random_vggish` and :func:`random_vggish_pca` of ``seed``."""
    from pipeline.teachers.vggish import PCA_FILE, WEIGHTS_FILE

    network = random_vggish(seed) if network is None else network
    pca = random_vggish_pca(network, seed) if pca is None else pca
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / WEIGHTS_FILE)
    torch.save(pca, folder / PCA_FILE)
    return folder / WEIGHTS_FILE


OPENL3_WEIGHTS_FILE = "torchopenl3_mel128_music_512.pth.tar"


def random_openl3(seed: int = 0) -> torch.nn.Module:
    """mel128/music/512 OpenL3 with random weights and BatchNorm statistics far from 0 / 1; in
    eval mode."""
    from pipeline.teachers.openl3 import build_openl3

    torch.manual_seed(seed)
    model = build_openl3("mel128", "music", 512)
    _spread_batchnorms(model)
    return model.eval()


def write_openl3_weights(
    folder: Path, seed: int = 0, *, model: torch.nn.Module | None = None
) -> Path:
    """``torchopenl3_mel128_music_512.pth.tar``: the mel128/music/512 network's state dict
    (``model``'s, or :func:`random_openl3` of ``seed``)."""
    model = random_openl3(seed) if model is None else model
    path = folder / OPENL3_WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def random_passt(seed: int = 0) -> torch.nn.Module:
    """``get_basic_model``'s network with random weights, its LayerNorms and position
    embeddings moved off their initial values."""
    from pipeline.teachers.passt import build_passt

    torch.manual_seed(seed)
    model = build_passt()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        model.time_new_pos_embed.normal_(0.0, 0.3)
        model.freq_new_pos_embed.normal_(0.0, 0.3)
    return model


def write_passt_weights(
    folder: Path, seed: int = 0, *, model: torch.nn.Module | None = None
) -> Path:
    """``passt-s-f128-p16-s10-ap.476-swa.pt``: a plain state dict (``model``'s, or
    :func:`random_passt` of ``seed``)."""
    from pipeline.teachers.passt import WEIGHTS_FILE

    model = random_passt(seed) if model is None else model
    path = folder / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def random_cnn14(seed: int = 0) -> torch.nn.Module:
    """PANNs Cnn14 with random weights and BatchNorm statistics far from 0 / 1; in eval mode."""
    from pipeline.teachers.panns import build_cnn14

    torch.manual_seed(seed)
    model = build_cnn14()
    _spread_batchnorms(model)
    return model.eval()


def panns_checkpoint(state: dict) -> dict:
    """What the published checkpoints hold: ``{"iteration", "model": state, "sampler"}``, the
    training sampler's state with numpy arrays in it, as the real file's has."""
    sampler = {
        "indexes_per_class": [np.arange(k, k + 3) for k in range(527)],
        "queue": [5, 1],
        "pointers_of_classes": [0] * 527,
    }
    return {"iteration": 1, "model": state, "sampler": sampler}


def write_panns_weights(
    folder: Path, seed: int = 0, *, model: torch.nn.Module | None = None
) -> Path:
    """``Cnn14_mAP=0.431.pth`` as published (:func:`panns_checkpoint` of ``model``'s state dict,
    or of :func:`random_cnn14` of ``seed``)."""
    from pipeline.teachers.panns import WEIGHTS_FILE

    model = random_cnn14(seed) if model is None else model
    path = folder / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(panns_checkpoint(model.state_dict()), path)
    return path


WRITE_WEIGHTS = {
    "vggish": write_vggish_weights,
    "openl3": write_openl3_weights,
    "passt": write_passt_weights,
    "panns": write_panns_weights,
}
