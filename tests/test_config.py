"""Training configs: presets, the paper's λ, overrides, and the run hash."""

from __future__ import annotations

import pytest

from pipeline.students import student_options
from pipeline.train.config import (
    RECIPE,
    ConfigError,
    TrainConfig,
    of_current_recipe,
    train_config,
)
from pipeline.train.presets import (
    paper_lambda,
    paper_probe_lr,
    paper_time_factors,
    probe_standardises,
)


def test_openmic_preset_has_the_papers_settings() -> None:
    cfg = train_config("openmic", teacher="passt")
    assert (cfg.student, cfg.frontend, cfg.batch_size, cfg.lr, cfg.weight_decay) == (
        "cp_resnet",
        "cp_resnet",
        16,
        1e-4,
        1e-4,
    )
    assert (cfg.plateau_factor, cfg.plateau_patience, cfg.early_stop_patience) == (0.2, 8, 15)
    assert (cfg.mixup_alpha, cfg.specaug_freq, cfg.specaug_time) == (0.3, 48, 192)
    assert (
        cfg.band_jitter
    )  # approximated on cached mels (pipeline.extract.melbanks.jitter_mel_bands)
    assert (cfg.grad_clip, cfg.seed) == (1.0, 1223)
    # Length in optimiser steps, no epoch cap (official max_steps 80000, max_epochs -1).
    assert (cfg.max_steps, cfg.max_epochs) == (80_000, None)
    assert (cfg.kd_weight, cfg.probe_max_steps) == (0.3, 80_000)


def test_magnatagatune_preset() -> None:
    cfg = train_config("magnatagatune", teacher="vggish")
    assert (cfg.student, cfg.frontend) == ("mobile_fcn", "mobile_fcn")
    assert (cfg.plateau_patience, cfg.early_stop_patience, cfg.mixup_alpha) == (5, 12, 0.0)
    assert (cfg.specaug_freq, cfg.specaug_time, cfg.plateau_factor) == (0, 0, 0.2)
    assert not cfg.band_jitter
    assert (cfg.max_steps, cfg.max_epochs) == (100_000, None)
    assert cfg.regulariser_weight == 0.6


def test_demo_preset_keeps_its_epoch_length() -> None:
    cfg = train_config("demo", teacher="musicnn")
    assert cfg.max_epochs == 10 and cfg.student_options == {"base_channels": 32}
    assert cfg.time_factors == (None,)  # musicnn: computed factors


@pytest.mark.parametrize(
    ("dataset", "teacher", "factors"),
    [
        ("openmic", "vggish", (1, 6)),
        ("openmic", "openl3", (1, 6)),
        ("openmic", "passt", (1, 6)),
        ("openmic", "panns", (1, 60)),
        ("magnatagatune", "vggish", (2, 1)),
        ("magnatagatune", "openl3", (2, 1)),
        ("magnatagatune", "passt", (2, 1)),
        ("magnatagatune", "panns", (1, 15)),
    ],
)
def test_official_time_factors(dataset: str, teacher: str, factors: tuple[int, int]) -> None:
    assert train_config(dataset, teacher=teacher).time_factors == (factors,)


def test_other_teachers_students_and_datasets_get_computed_factors() -> None:
    assert train_config("openmic", teacher="panns+musicnn").time_factors == ((1, 60), None)
    assert train_config("openmic", teacher="hear-m").time_factors == (None,)
    assert paper_time_factors("openmic", "mobile_fcn", "vggish") is None  # not the paper's pair
    assert train_config("mine", teacher="vggish").time_factors == (None,)
    assert train_config("openmic", teacher="none").time_factors == ()


@pytest.mark.parametrize(
    ("dataset", "teacher", "lr"),
    [
        ("openmic", "vggish", 0.2),
        ("openmic", "openl3", 0.1),
        ("openmic", "passt", 0.1),
        ("openmic", "panns", 0.1),
        ("magnatagatune", "vggish", 0.1),
        ("magnatagatune", "openl3", 0.1),
        ("magnatagatune", "passt", 0.2),
        ("magnatagatune", "panns", 0.1),
    ],
)
def test_official_probe_learning_rates(dataset: str, teacher: str, lr: float) -> None:
    assert paper_probe_lr(dataset, teacher) == lr
    assert train_config(dataset, teacher=teacher, kd=True).probe_lrs == (lr,)
    assert train_config(dataset, teacher=teacher, probe_lr=1).probe_lrs == (1.0,)


def test_run_length_limits() -> None:
    cfg = train_config("openmic", max_epochs=3)
    assert (cfg.max_steps, cfg.max_epochs) == (80_000, 3)  # whichever comes first
    with pytest.raises(ConfigError, match="max_steps must be ≥ 1"):
        train_config("openmic", max_steps=0)
    with pytest.raises(ConfigError, match="probe_lr must be > 0"):
        train_config("openmic", probe_lr=-0.1)


@pytest.mark.parametrize(
    ("teacher", "expected"), [("passt", 0.9), ("panns", 0.9), ("vggish", 0.8), ("openl3", 0.8)]
)
def test_paper_lambda_on_openmic(teacher: str, expected: float) -> None:
    assert train_config("openmic", teacher=teacher).regulariser_weight == expected


def test_several_teachers_take_the_mean_lambda() -> None:
    assert paper_lambda("openmic", ("panns", "vggish")) == pytest.approx(0.85)
    cfg = train_config("openmic", teacher="panns+vggish")
    assert cfg.teachers == ("panns", "vggish")


def test_baseline_has_no_teacher_and_lambda_zero() -> None:
    cfg = train_config("openmic", teacher="none", lam=0.9)
    assert cfg.teachers == ()
    assert cfg.regulariser_weight == 0.0


def test_overrides_are_typed_and_checked() -> None:
    cfg = train_config("openmic", teacher="panns", lr=1, lam=0.5, student_options={"rho": 5})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.regulariser_weight == 0.5
    with pytest.raises(ConfigError, match="unknown setting.*learning_rate"):
        train_config("openmic", learning_rate=0.1)
    with pytest.raises(ConfigError, match="lam must lie in"):
        train_config("openmic", teacher="panns", lam=1.5)
    with pytest.raises(ConfigError, match="kd needs a teacher"):
        train_config("openmic", kd=True)
    with pytest.raises(ConfigError, match="unknown student"):
        train_config("openmic", student="vgg")
    with pytest.raises(ConfigError, match="True or False"):
        train_config("openmic", teacher="panns", kd=1)
    with pytest.raises(ConfigError, match="teacher_weights has 1 entries for 2"):
        train_config("openmic", teacher="panns+vggish", teacher_weights=[1])


def test_unknown_dataset_gets_default_preset_and_presets_can_be_chosen() -> None:
    assert train_config("mine").mixup_alpha == 0.0
    assert train_config("mine", preset="openmic").mixup_alpha == 0.3
    with pytest.raises(ConfigError, match="unknown preset"):
        train_config("mine", preset="nope")


def test_run_hash_ignores_speed_settings_only() -> None:
    base = train_config("openmic", teacher="panns")
    assert base.digest() == train_config("openmic", teacher="panns", workers=7).digest()
    for speed in ({"device": "cuda", "precision": "fp32"}, {"cache_on_device": "on"}):
        assert base.digest() == train_config("openmic", teacher="panns", **speed).digest()
    assert base.digest() != train_config("openmic", teacher="panns", lr=3e-4).digest()
    # Spelling out the paper's λ is the same run as leaving it to the preset.
    assert base.digest() == train_config("openmic", teacher="panns", lam=0.9).digest()
    assert base.run_name().startswith("cp_resnet-panns-")
    assert (
        train_config("openmic", teacher="panns", kd=True)
        .run_name()
        .startswith("cp_resnet-panns-kd-")
    )
    assert base.run_name("stores A") != base.run_name("stores B")
    # The recipe's new fields and the tables' resolved values are part of the hash.
    assert base.digest() != train_config("openmic", teacher="panns", max_steps=1000).digest()
    assert base.digest() != train_config("openmic", teacher="panns", band_jitter=False).digest()

    assert base.digest() != train_config("openmic", teacher="panns", max_epochs=50).digest()
    assert base.digest() != train_config("openmic", teacher="panns", align="mean").digest()
    kd = train_config("openmic", teacher="vggish", kd=True)
    assert kd.digest() == train_config("openmic", teacher="vggish", kd=True, probe_lr=0.2).digest()
    assert kd.digest() != train_config("openmic", teacher="vggish", kd=True, probe_lr=0.1).digest()


def test_precision_enters_the_run_name_only_when_it_is_not_fp32() -> None:
    # Names computed by the code before the precision setting existed: float32 runs keep them.
    assert train_config("demo", device="cpu").run_name() == "cp_resnet-none-bc00a330"
    assert train_config("demo", precision="fp32").run_name() == "cp_resnet-none-bc00a330"
    assert train_config("openmic", teacher="passt", device="cpu").run_name("x") == (
        "cp_resnet-passt-b6ffd294"
    )
    kd = train_config("magnatagatune", teacher="vggish", kd=True, precision="fp32")
    assert kd.run_name() == "mobile_fcn-vggish-kd-4601c547"
    bf16, fp16 = (train_config("demo", precision=p) for p in ("bf16", "fp16"))
    assert len({bf16.run_name(), fp16.run_name(), "cp_resnet-none-bc00a330"}) == 3
    # "auto" resolves per device: float32 on the CPU.
    assert train_config("demo", precision="auto", device="cpu").resolved_precision == "fp32"
    assert bf16.resolved_precision == "bf16"
    with pytest.raises(ConfigError, match="precision must be one of bf16, fp16, fp32 or auto"):
        train_config("demo", precision="half")
    with pytest.raises(ConfigError, match="cache_on_device must be one of auto, on, off"):
        train_config("demo", cache_on_device="yes")


def test_probes_standardise_only_teachers_the_paper_did_not_use() -> None:
    assert not any(probe_standardises(t) for t in ("vggish", "openl3", "passt", "panns"))
    assert probe_standardises("musicnn") and probe_standardises("hear-some_module")


def test_runs_of_another_recipe_are_recognised() -> None:
    assert of_current_recipe({"recipe": RECIPE})
    assert not of_current_recipe({})  # made before the recipe was recorded: recipe 1
    assert not of_current_recipe({"recipe": RECIPE - 1})


def test_another_student_on_a_preset_drops_the_presets_student_options() -> None:
    # The demo preset's options are cp_resnet's; `make train STUDENT=mobile_fcn` must not crash.
    cfg = train_config("demo", student="mobile_fcn", teacher="musicnn")
    assert (cfg.student, cfg.student_options) == ("mobile_fcn", {})
    assert train_config("demo", student="cp_resnet").student_options == {"base_channels": 32}
    given = train_config("demo", student="mobilenet_v3", student_options={"width": 0.25})
    assert given.student_options == {"width": 0.25}  # options the user gives are kept


def test_an_option_the_student_does_not_take_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"student mobile_fcn has no option 'base_channels' "
        r"\(its options: none\)",
    ):
        train_config("demo", student="mobile_fcn", student_options={"base_channels": 8})
    with pytest.raises(ConfigError, match=r"no option 'width' \(its options: rho, base_channels\)"):
        TrainConfig(dataset="mine", student_options={"width": 1.0})
    assert student_options("mobilenet_v3") == {"width": 0.5, "dropout": 0.2}
    assert student_options("cp_resnet") == {"rho": 7, "base_channels": 128}
    assert student_options("mobile_fcn") == {}
