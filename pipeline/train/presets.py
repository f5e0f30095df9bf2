"""The paper's settings: training presets per dataset, and the values it fixed per teacher.

:data:`PRESETS` holds, per dataset, the hyper-parameters of the official configs that differ
from :class:`pipeline.train.config.TrainConfig`'s defaults (summarised in the README); its
``student_options`` belong to its ``student`` and are dropped when another student is chosen
(:func:`pipeline.train.config.train_config`). The functions give what the paper fixed per
dataset and teacher: λ (:func:`paper_lambda`), the time alignment factors
(:func:`paper_time_factors`), the linear probes' learning rate (:func:`paper_probe_lr`) and
whether a probe standardises its inputs
(:func:`probe_standardises`).
"""

from __future__ import annotations

from typing import Any

# λ per teacher from the paper (OpenMIC); MTAT used 0.6 for all four teachers.
_OPENMIC_LAMBDA = {"passt": 0.9, "panns": 0.9, "vggish": 0.8, "openl3": 0.8}

# Fixed (student, teacher) repeat factors of the official configs (config/<dataset>/east_*.json,
# the feature stage that carries the weight), per (dataset, student) and teacher store. They
# assume the paper's stores: PANNs as one clip-level frame (layer=clip), VGGish and PaSST 0.96 s
# frames, OpenL3 1 s windows every 0.96 s. A store of another variant needs another name.
_PAPER_TIME_FACTORS: dict[tuple[str, str], dict[str, tuple[int, int]]] = {
    ("openmic", "cp_resnet"): {
        "vggish": (1, 6),
        "openl3": (1, 6),
        "passt": (1, 6),
        "panns": (1, 60),
    },
    ("magnatagatune", "mobile_fcn"): {
        "vggish": (2, 1),
        "openl3": (2, 1),
        "passt": (2, 1),
        "panns": (1, 15),
    },
}

# SGD learning rates of the official linear probes (config/<dataset>/lr_*.json); others 0.1.
_PAPER_PROBE_LR = {("openmic", "vggish"): 0.2, ("magnatagatune", "passt"): 0.2}

PRESETS: dict[str, dict[str, Any]] = {
    # CP ResNet on whole 10 s clips, mixup and SpecAugment (official OpenMIC config).
    "openmic": {
        "student": "cp_resnet",
        "frontend": "cp_resnet",
        "plateau_patience": 8,
        "early_stop_patience": 15,
        "mixup_alpha": 0.3,
        "specaug_freq": 48,
        "specaug_time": 192,
        "band_jitter": True,
    },
    # Mobile FCN on ≈ 29 s clips, no augmentation (official MTAT config).
    "magnatagatune": {
        "student": "mobile_fcn",
        "frontend": "mobile_fcn",
        "max_steps": 100_000,
        "plateau_patience": 5,
        "early_stop_patience": 12,
    },
    # Sized for a 2-core CPU: a narrow CP ResNet on 16 kHz / 96-band mels, a larger step size
    # and short patience, and 10 epochs (about 95 s a run), so that `make demo` trains two arms
    # with three seeds each in under 10 minutes; the step limit is never reached. λ on the
    # demo's validation split (musicnn, one seed, 20 epochs): 0.1 .885, 0.3 .877, 0.5 .879,
    # 0.7 .870, 0.9 .785; 0.1-0.7 cannot be told apart at one seed, 0.9 lets the musicnn term
    # crowd out the labels of this small set; 0.5 is kept.
    "demo": {
        "student": "cp_resnet",
        "student_options": {"base_channels": 32},
        "frontend": "mobile_fcn",
        "lam": 0.5,
        "lr": 1e-3,
        "max_epochs": 10,
        "plateau_patience": 3,
        "early_stop_patience": 6,
        "specaug_freq": 16,
        "specaug_time": 64,
        "shard_window": 2,
    },
    # Any other dataset (your own CSV): the OpenMIC settings without augmentation.
    "default": {"student": "cp_resnet", "frontend": "cp_resnet"},
}


def paper_lambda(dataset: str, teachers: tuple[str, ...]) -> float:
    """The paper's λ: MTAT 0.6; OpenMIC 0.9 (PaSST, PANNs) or 0.8 (VGGish, OpenL3).

    Several teachers get the mean of their values; teachers the paper did not use (and other
    datasets) get 0.9 on OpenMIC-like data and 0.6 on MTAT.

    Parameters
    ----------
    dataset : str
        Dataset name (``"magnatagatune"`` is MTAT; any other is treated as OpenMIC-like).
    teachers : tuple of str
        Teacher store names; at least one.

    Returns
    -------
    float
        λ in [0, 1].
    """
    if dataset == "magnatagatune":
        return 0.6
    return sum(_OPENMIC_LAMBDA.get(t, 0.9) for t in teachers) / len(teachers)


def paper_time_factors(dataset: str, student: str, teacher: str) -> tuple[int, int] | None:
    """The official fixed (student, teacher) repeat factors, ``None`` where the paper has none.

    OpenMIC with CP ResNet: teacher ×6 for VGGish, OpenL3 and PaSST, ×60 for PANNs (student ×1).
    MagnaTagATune with Mobile FCN: student ×2 for VGGish, OpenL3 and PaSST (teacher ×1); teacher
    ×15 for PANNs (student ×1). Other datasets, students and teachers (musicnn, ``hear:*``,
    your own data) get factors computed from the frame counts
    (:func:`pipeline.train.regularisers.repeat_factors`).

    Parameters
    ----------
    dataset, student, teacher : str
        Dataset, student and teacher store names.

    Returns
    -------
    tuple of int or None
        (student factor, teacher factor), or ``None`` = computed from the frame counts.
    """
    return _PAPER_TIME_FACTORS.get((dataset, student), {}).get(teacher)


def probe_standardises(teacher: str) -> bool:
    """Whether a linear probe on ``teacher`` standardises its inputs.

    The official probes take the raw embeddings of the paper's four teachers (after their load
    normalisation); other teachers (musicnn, ``hear:*``) have none, and their probes standardise.

    Parameters
    ----------
    teacher : str
        Teacher store name.

    Returns
    -------
    bool
        True for every teacher but VGGish, OpenL3, PaSST and PANNs.
    """
    return teacher not in _OPENMIC_LAMBDA


def paper_probe_lr(dataset: str, teacher: str) -> float:
    """SGD learning rate of the official linear probe: 0.2 for OpenMIC-VGGish and MTAT-PaSST,
    else 0.1.

    Parameters
    ----------
    dataset, teacher : str
        Dataset and teacher store names.

    Returns
    -------
    float
        The learning rate.
    """
    return _PAPER_PROBE_LR.get((dataset, teacher), 0.1)
