"""Training configurations: one frozen dataclass, presets per dataset, ``KEY=VALUE`` overrides.

A preset holds the paper's hyper-parameters for a dataset (:mod:`pipeline.train.presets`, from the
official configs summarised in the README); anything can be overridden from the command line::

    cfg = train_config("openmic", teacher="passt")                 # EAsT, λ = 0.9, DC
    cfg = train_config("magnatagatune", teacher="vggish", loss="cosine", lam=0.6)
    cfg.run_name()                                                 # "cp_resnet-passt-1a2b3c4d"

The hash behind the run name covers every field that can change the result; fields that only
change speed (``workers``, ``device``, ``cache_on_device``) are left out, so a run can be resumed
with other ones. ``precision`` changes the arithmetic: it enters the hash when it is not
``"fp32"``, so float32 runs keep their names and a bfloat16 run is a run of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.devices import AUTO, PRECISIONS, resolve_precision
from pipeline.students import list_students, student_options
from pipeline.train.presets import (
    PRESETS,
    paper_lambda,
    paper_probe_lr,
    paper_time_factors,
    probe_standardises,
)


class ConfigError(ValueError):
    """A training setting that does not exist or has an invalid value."""


# Version of the training recipe (students, front end, objective, schedule). Runs record it in
# config.json; evaluation and reports leave out runs of another recipe. 2 = the paper-exact
# recipe (official students, Kaldi front end, validation total loss, per-clip mixup, ...).
RECIPE = 2

#: ``cache_on_device`` values (``"auto"``: on a CUDA device, when the splits fit).
CACHE_SETTINGS = ("auto", "on", "off")

# Fields that change how fast a run goes, never what it computes.
NOT_HASHED = frozenset({"workers", "device", "cache_on_device", "precision"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything stage two needs to train one student.

    Attributes
    ----------
    dataset : manifest name (``data/manifests/<dataset>.parquet``)
    student : registered student name; ``student_options`` are passed to its builder and must
        be options it takes (:func:`pipeline.students.student_options`)
    teacher : teacher store name(s) joined by ``+`` (``"panns+vggish"``), or ``"none"``
    frontend : mel front end; the mel store is ``data/cache/<dataset>/mel-<frontend>.zarr``
    loss : teacher regulariser, ``"dc"`` (distance correlation) or ``"cosine"`` (cosine
        distance difference)
    lam : λ in (1 − λ)·BCE + λ·regulariser; ``None`` = the paper's value for dataset and teacher
    kd : add classical knowledge distillation from frozen linear probes on the cached
        embeddings (EAsT-KD: regulariser = kd_weight·KD + (1 − kd_weight)·DC)
    kd_weight : weight of KD inside the EAsT-KD regulariser (0.3 in the paper)
    align : time alignment of student and teacher frames: ``"repeat"`` (integer repeat factors,
        then both cut to the shorter; the official fixed factors for the paper's dataset,
        student and teacher, see :func:`pipeline.train.presets.paper_time_factors`, computed
        ones otherwise) or ``"mean"`` (both averaged over time)
    teacher_weights : relative weight of each teacher's term (default equal)
    lr, weight_decay : Adam settings
    batch_size : clips per optimiser step (the global batch with several processes); also the
        validation batch, since the regulariser of the validation loss compares a batch's clips
    grad_clip : max gradient norm
    max_steps : stop after this many optimiser steps; ``None`` = no step limit
    max_epochs : stop after this many passes over the training split; ``None`` = no epoch
        limit. A run ends at whichever limit (or early stopping) comes first; an epoch cut short
        by ``max_steps`` is not validated (as in Lightning)
    plateau_factor, plateau_patience : learning rate × factor once the validation total loss
        has not fallen by more than 0.01 % (relative) for more than ``patience`` epochs
        (torch's ``ReduceLROnPlateau`` defaults otherwise); see :mod:`pipeline.train.schedule`
    early_stop_patience : stop after that many epochs without a lower validation total loss
    mixup_alpha : per-clip mixup with a partner drawn from the whole training split,
        λ ~ Beta(α, α) folded to ≥ 0.5, of mels (after SpecAugment), labels, label masks (OR)
        and teacher embeddings; 0 = off
    specaug_freq, specaug_time : SpecAugment, one band of mel bins and one of frames per clip,
        of width drawn below these values (torchaudio's masking); 0 = off. Masked values become
        a log-mel of 0 as the front end normalises it
    band_jitter : OpenMIC's training-time jitter of the mel band limits (f_min + [0, 20) Hz,
        f_max − [0, 2000) Hz per clip), approximated on the cached log-mels by warping them
        along the bands (:func:`pipeline.extract.melbanks.jitter_mel_bands`), before SpecAugment
    label_fraction : fraction of the training split's clips whose labels are kept (seeded by
        ``seed``, class-stratified, nested across fractions, see
        :func:`pipeline.data.fractions.labelled_subset`); the other training clips stay in training
        with all labels unknown, so the teacher term still sees them; validation and test are
        untouched; 1 = all
    shard_window : shards shuffled together (see :class:`pipeline.train.samplers.ShardAwareSampler`)
    seed : everything random derives from it
    probe_lr : SGD learning rate of the KD linear probes; ``None`` = the official value per
        dataset and teacher (:func:`pipeline.train.presets.paper_probe_lr`)
    probe_max_steps : optimiser-step limit of the KD linear probes
    workers : loader worker processes
    device : torch device; ``None`` = cuda when available
    precision : ``"bf16"``, ``"fp16"`` or ``"fp32"``: the student's forward and backward run under
        autocast at that precision (fp16 with a gradient scaler), while parameters, losses,
        metrics and checkpoints stay float32; ``None`` or ``"auto"`` = bf16 on a CUDA device that
        supports it, else fp32 (:func:`pipeline.devices.resolve_precision`)
    cache_on_device : ``"auto"``, ``"on"`` or ``"off"``: hold both splits' mels and embeddings
        on the device and index batches there (:mod:`pipeline.train.device_data`); ``"auto"`` =
        on a CUDA device when they fit in half its free memory
    """

    dataset: str
    student: str = "cp_resnet"
    student_options: dict[str, Any] = field(default_factory=dict)
    teacher: str = "none"
    frontend: str = "cp_resnet"
    loss: Literal["dc", "cosine"] = "dc"
    lam: float | None = None
    kd: bool = False
    kd_weight: float = 0.3
    align: Literal["repeat", "mean"] = "repeat"
    teacher_weights: tuple[float, ...] | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 16
    grad_clip: float = 1.0
    max_steps: int | None = 80_000
    max_epochs: int | None = None
    plateau_factor: float = 0.2
    plateau_patience: int = 8
    early_stop_patience: int = 15
    mixup_alpha: float = 0.0
    specaug_freq: int = 0
    specaug_time: int = 0
    band_jitter: bool = False
    label_fraction: float = 1.0
    shard_window: int = 4
    seed: int = 1223
    probe_lr: float | None = None
    probe_max_steps: int = 80_000
    workers: int = 2
    device: str | None = None
    precision: str | None = None
    cache_on_device: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.student not in list_students():
            problems.append(f"unknown student {self.student!r} ({', '.join(list_students())})")
        else:
            problems.extend(self._option_problems())
        if self.loss not in ("dc", "cosine"):
            problems.append(f"loss must be 'dc' or 'cosine', not {self.loss!r}")
        if self.align not in ("repeat", "mean"):
            problems.append(f"align must be 'repeat' or 'mean', not {self.align!r}")
        if self.lam is not None and not 0.0 <= self.lam <= 1.0:
            problems.append(f"lam must lie in [0, 1], not {self.lam}")
        if not 0.0 <= self.kd_weight <= 1.0:
            problems.append(f"kd_weight must lie in [0, 1], not {self.kd_weight}")
        if self.kd and not self.teachers:
            problems.append("kd needs a teacher (teacher=none given)")
        if self.teacher_weights is not None and len(self.teacher_weights) != len(self.teachers):
            problems.append(
                f"teacher_weights has {len(self.teacher_weights)} entries for "
                f"{len(self.teachers)} teachers"
            )
        for name in ("batch_size", "max_steps", "max_epochs", "shard_window", "probe_max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be ≥ 1, not {value}")
        if self.max_steps is None and self.max_epochs is None:
            problems.append("max_steps and max_epochs are both None: a run needs a limit")
        if self.probe_lr is not None and not self.probe_lr > 0:
            problems.append(f"probe_lr must be > 0, not {self.probe_lr}")
        if not 0.0 < self.label_fraction <= 1.0:
            problems.append(f"label_fraction must lie in (0, 1], not {self.label_fraction}")
        if self.workers < 0:
            problems.append(f"workers must be ≥ 0, not {self.workers}")
        if self.precision not in (None, AUTO, *PRECISIONS):
            problems.append(
                f"precision must be one of {', '.join(PRECISIONS)} or {AUTO}, "
                f"not {self.precision!r}"
            )
        if self.cache_on_device not in CACHE_SETTINGS:
            problems.append(
                f"cache_on_device must be one of {', '.join(CACHE_SETTINGS)}, "
                f"not {self.cache_on_device!r}"
            )
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def _option_problems(self) -> list[str]:
        """One line per ``student_options`` key the student does not take, naming the valid."""
        valid = list(student_options(self.student))
        unknown = [k for k in self.student_options if k not in valid]
        choices = ", ".join(valid) if valid else "none"
        return [
            f"student {self.student} has no option {k!r} (its options: {choices})" for k in unknown
        ]

    @property
    def teachers(self) -> tuple[str, ...]:
        """Teacher store names; empty for the baseline."""
        if self.teacher in ("", "none"):
            return ()
        return tuple(self.teacher.split("+"))

    @property
    def regulariser_weight(self) -> float:
        """λ actually used: 0 without a teacher, else ``lam`` or the paper's value."""
        if not self.teachers:
            return 0.0
        return self.lam if self.lam is not None else paper_lambda(self.dataset, self.teachers)

    @property
    def resolved_precision(self) -> str:
        """The precision the run uses on its device (``"auto"`` resolved)."""
        return resolve_precision(self.precision, self.device)

    @property
    def time_factors(self) -> tuple[tuple[int, int] | None, ...]:
        """Per teacher the fixed (student, teacher) repeat factors, ``None`` = computed."""
        return tuple(paper_time_factors(self.dataset, self.student, t) for t in self.teachers)

    @property
    def probe_lrs(self) -> tuple[float, ...]:
        """Per teacher the SGD learning rate of its KD probe: ``probe_lr`` or the paper's."""
        if self.probe_lr is not None:
            return tuple(self.probe_lr for _ in self.teachers)
        return tuple(paper_probe_lr(self.dataset, t) for t in self.teachers)

    def as_dict(self) -> dict[str, Any]:
        """Every field by name (``dataclasses.asdict``)."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of the fields that change results (hex, 64 characters).

        Values the config resolves from tables (λ, time factors, probe learning rates) enter as
        resolved, so a run spelling out the paper's value is the run that leaves it to the table.
        """
        fields = {k: v for k, v in self.as_dict().items() if k not in NOT_HASHED}
        if self.label_fraction == 1.0:
            del fields["label_fraction"]  # the run names from before the setting existed
        fields["lam"] = self.regulariser_weight
        fields["time_factors"] = self.time_factors
        fields["probe_lr"] = self.probe_lrs if self.kd else None
        fields["probe_standardise"] = (
            [probe_standardises(t) for t in self.teachers] if self.kd else None
        )
        fields["recipe"] = RECIPE
        if self.resolved_precision != "fp32":
            fields["precision"] = self.resolved_precision
        text = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()

    def run_name(self, extra: str = "") -> str:
        """``<student>-<teacher>[-kd]-<8 hex>``; ``extra`` (store fingerprints) joins the hash."""
        digest = hashlib.sha256((self.digest() + extra).encode()).hexdigest()[:8]
        teacher = self.teacher if self.teachers else "none"
        return f"{self.student}-{teacher}{'-kd' if self.kd else ''}-{digest}"


def of_current_recipe(config: dict[str, Any]) -> bool:
    """Whether a run's ``config.json`` comes from this version of the training recipe.

    Runs made before the recipe was recorded count as recipe 1.

    Parameters
    ----------
    config : dict
        A run's ``config.json``.

    Returns
    -------
    bool
        Whether its ``recipe`` is :data:`RECIPE`.
    """
    return config.get("recipe", 1) == RECIPE


def _coerce(name: str, value: Any) -> Any:
    """Check an override against the field's type; ints are accepted for floats."""
    spec = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, not {value!r}")
    elif str(spec.type).startswith("float") and type(value) is int:
        value = float(value)
    if name == "teacher_weights" and value is not None:
        value = tuple(float(v) for v in value)
    if name == "student_options" and not isinstance(value, dict):
        raise ConfigError(f"student_options must be a dict, e.g. {{'rho': 5}}, not {value!r}")
    return value


def train_config(dataset: str, *, preset: str | None = None, **overrides: Any) -> TrainConfig:
    """The preset of ``dataset`` (or ``preset``) with ``overrides`` applied.

    Parameters
    ----------
    dataset : str
        Manifest name.
    preset : str or None
        A key of :data:`pipeline.train.presets.PRESETS`; ``None`` = ``dataset``'s own preset if
        there is one, else ``"default"``.
    **overrides :
        :class:`TrainConfig` fields; ``None`` values are ignored, ints are accepted for floats.
        A preset's ``student_options`` are for the preset's student: a ``student`` other than
        the preset's drops them (``student_options`` given here are kept).

    Returns
    -------
    TrainConfig

    Raises
    ------
    ConfigError
        For an unknown preset or setting (listing the valid ones) or an invalid value.
    """
    preset = preset or (dataset if dataset in PRESETS else "default")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"dataset"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    values = dict(PRESETS[preset])
    given = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
    if given.get("student", values.get("student")) != values.get("student"):
        values.pop("student_options", None)  # the preset's options are for its own student
    values.update(given)
    return TrainConfig(dataset=dataset, **values)
