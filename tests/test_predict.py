import json
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from pipeline.cli import main
from pipeline.data.audio import load_audio
from pipeline.extract.frontends import MelFrontEnd
from pipeline.inference.predict import Predictor, load_run, window_starts
from pipeline.inference.runs import FrontEndChangedWarning, RunError
from pipeline.stores import open_store
from pipeline.students import create_student
from pipeline.train.checkpoints import inference_checkpoint as _inference_checkpoint

CLASSES = ["piano", "drums", "voice"]
MEL_FRAMES = 101  # mobile_fcn: hop 320 at 16 kHz, frames = 1 + (samples - 1) // 320
SR = 16_000


def _config(**changes):
    config = {
        "dataset": "toy",
        "student": "cp_resnet",
        "student_options": {"base_channels": 8},
        "teacher": "none",
        "frontend": "mobile_fcn",
        "classes": CLASSES,
        "n_mels": 96,
        "mel_frames": MEL_FRAMES,
        "seed": 0,
        "pipeline_version": "0.1.0",
    }
    return {**config, **changes}


def _model():
    torch.manual_seed(0)
    model = create_student("cp_resnet", n_classes=3, n_mels=96, base_channels=8)
    # Non-trivial BatchNorm statistics, so that train-mode inference would give other numbers.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _write_run(folder, config=None, stores=None):
    folder.mkdir(parents=True, exist_ok=True)
    valid = {"loss": 0.5, "map": 0.4}
    checkpoint = _inference_checkpoint(_model(), config or _config(), 3, valid)
    torch.save(checkpoint, folder / "best.pt")
    if stores is not None:
        (folder / "stores.json").write_text(json.dumps(stores))
    return folder


def _signal(n, sr, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    specs = {
        "short.wav": (8001, SR),  # 26 frames: one wrapped window
        "one.wav": (32_001, SR),  # 101 frames: exactly one window
        "long.wav": (52_801, SR),  # 166 frames: windows at 0, 50 and 65 (end-aligned)
        "cd.wav": (132_300, 44_100),  # 3 s at 44.1 kHz → 48 000 samples → 150 frames
        "tiny.wav": (160, SR),  # 0.01 s, less than one FFT frame
    }
    paths = {}
    for seed, (name, (n, sr)) in enumerate(specs.items()):
        sf.write(root / name, _signal(n, sr, seed), sr)
        paths[name] = str(root / name)
    garbage = root / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(9).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    paths["garbage.wav"] = str(garbage)
    paths["missing.wav"] = str(root / "missing.wav")
    return paths


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("runs") / "toy" / "cp_resnet-none-0000")


@pytest.fixture(scope="module")
def predictor(run_dir):
    return load_run(run_dir, device="cpu")


def _manual(path, windows_from_mel):
    """Decode → front end → float16 like the mel store → hand-built windows → mean sigmoid."""
    wave = load_audio(path, sr_hz=SR)
    mel = MelFrontEnd("mobile_fcn").embed([wave])[0].astype(np.float16).astype(np.float32)
    windows = windows_from_mel(mel)
    x = torch.from_numpy(np.stack([w.T for w in windows]).astype(np.float32))
    with torch.no_grad():
        logits, _ = _model()(x)
    return len(mel), torch.sigmoid(logits).mean(dim=0).numpy()


def _row(result, path):
    row = result.table.set_index("file").loc[path]
    return row, row[CLASSES].to_numpy(dtype=np.float64)


def test_window_starts():
    assert window_starts(26, 101) == [0]
    assert window_starts(101, 101) == [0]
    assert window_starts(102, 101) == [0, 1]
    assert window_starts(151, 101) == [0, 50]
    assert window_starts(166, 101) == [0, 50, 65]
    assert window_starts(5, 1) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        window_starts(0, 101)


def test_probabilities_equal_a_manual_computation(predictor, files):
    result = predictor.predict_files([files["long.wav"], files["one.wav"], files["short.wav"]])
    assert result.failures == {}
    assert list(result.table.columns) == ["file", "duration_s", "windows", *CLASSES]

    frames, expected = _manual(files["long.wav"], lambda m: [m[0:101], m[50:151], m[65:166]])
    assert frames == 166
    row, probs = _row(result, files["long.wav"])
    assert row["windows"] == 3 and row["duration_s"] == pytest.approx(3.3, abs=1e-4)
    np.testing.assert_allclose(probs, expected, atol=1e-6)

    frames, expected = _manual(files["one.wav"], lambda m: [m])
    assert frames == MEL_FRAMES
    row, probs = _row(result, files["one.wav"])
    assert row["windows"] == 1
    np.testing.assert_allclose(probs, expected, atol=1e-6)

    # Shorter than a window: repeated from its start, like a short training clip.
    frames, expected = _manual(files["short.wav"], lambda m: [np.concatenate([m] * 4)[:101]])
    assert frames == 26
    row, probs = _row(result, files["short.wav"])
    assert row["windows"] == 1
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_resampled_file_and_waveform_api(predictor, files):
    result = predictor.predict_files([files["cd.wav"]])
    frames, expected = _manual(files["cd.wav"], lambda m: [m[0:101], m[49:150]])
    assert frames == 150
    row, probs = _row(result, files["cd.wav"])
    assert row["windows"] == 2 and row["duration_s"] == pytest.approx(3.0)
    np.testing.assert_allclose(probs, expected, atol=1e-6)

    wave = load_audio(files["cd.wav"], sr_hz=predictor.sample_rate_hz)
    direct = predictor.predict_waveform(wave)
    assert direct.shape == (3,)
    np.testing.assert_allclose(direct, probs, atol=1e-6)
    with pytest.raises(ValueError, match="needs at least"):
        predictor.predict_waveform(np.zeros(100, dtype=np.float32))


def test_batch_size_does_not_change_results(predictor, files):
    paths = [files[n] for n in ("long.wav", "short.wav", "cd.wav", "one.wav")]
    one = predictor.predict_files(paths, batch_size=1).table
    many = predictor.predict_files(paths, batch_size=64).table
    assert list(one["file"]) == paths
    np.testing.assert_allclose(one[CLASSES], many[CLASSES], atol=1e-6)


def test_failures_are_reported_and_others_predicted(predictor, files):
    paths = [files[n] for n in ("garbage.wav", "one.wav", "missing.wav", "tiny.wav", "long.wav")]
    result = predictor.predict_files(paths)
    assert list(result.table["file"]) == [files["one.wav"], files["long.wav"]]
    assert set(result.failures) == {files["garbage.wav"], files["missing.wav"], files["tiny.wav"]}
    assert result.failures[files["garbage.wav"]].startswith("cannot decode")
    assert result.failures[files["missing.wav"]].startswith("file not found")
    assert "0.010 s long, needs at least 0.064 s" in result.failures[files["tiny.wav"]]

    empty = predictor.predict_files([files["missing.wav"]])
    assert empty.table.empty
    assert list(empty.table.columns) == ["file", "duration_s", "windows", *CLASSES]
    assert empty.top_tags() == []


def test_top_tags_table_and_csv(predictor, files, tmp_path):
    result = predictor.predict_files([files["one.wav"], files["long.wav"]])
    tags = result.top_tags(k=2)
    assert [file for file, _ in tags] == [files["one.wav"], files["long.wav"]]
    for (_, top), (_, row) in zip(tags, result.table[CLASSES].iterrows(), strict=True):
        assert len(top) == 2
        assert top[0][1] == pytest.approx(row.max()) and top[0][1] >= top[1][1]
        assert top[0][0] == row.idxmax()
    text = result.format_table(k=2)
    assert text.splitlines()[0].startswith("file") and files["long.wav"] in text
    assert f"{tags[0][1][0][0]} {tags[0][1][0][1]:.2f}" in text

    out = result.to_csv(tmp_path / "sub" / "tags.csv")
    table = pd.read_csv(out)
    assert list(table.columns) == ["file", "duration_s", "windows", *CLASSES]
    np.testing.assert_allclose(table[CLASSES], result.table[CLASSES], atol=1e-12)


def test_cli_exit_codes_table_and_csv(run_dir, files, tmp_path, capsys):
    out = tmp_path / "tags.csv"
    good = [files["one.wav"], files["cd.wav"]]
    assert main(["predict", "--run", str(run_dir), *good, "--csv", str(out), "--top", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("file") and "top 2 tags" in lines[0]
    for line, path in zip(lines[1:3], good, strict=True):
        assert line.startswith(path)
        assert len(re.findall(r"(piano|drums|voice) [01]\.\d\d", line)) == 2
    assert any(name in captured.out for name in CLASSES)
    assert captured.err == ""
    table = pd.read_csv(out)
    assert list(table.columns) == ["file", "duration_s", "windows", *CLASSES]
    assert list(table["file"]) == good and list(table["windows"]) == [1, 2]

    args = ["predict", "--run", str(run_dir), files["one.wav"], files["missing.wav"]]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert files["one.wav"] in captured.out
    assert captured.err.startswith(f"error: {files['missing.wav']}: file not found")

    assert main(["predict", "--run", str(run_dir), files["garbage.wav"], files["tiny.wav"]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {files['garbage.wav']}: cannot decode")
    assert err[1].startswith(f"error: {files['tiny.wav']}: ")

    assert main(["predict", "--run", str(tmp_path / "nope"), files["one.wav"]]) == 2
    assert "train it first" in capsys.readouterr().err


def test_missing_run_and_checkpoint_file(run_dir, tmp_path, monkeypatch):
    empty = tmp_path / "runs" / "toy" / "untrained"
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"best\.pt: train it first.*DATASET=toy"):
        load_run(empty)

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    predictor = load_run(run_dir / "best.pt", device="cpu")
    assert calls and all(c.get("weights_only") is True for c in calls)
    assert isinstance(predictor, Predictor)
    assert predictor.classes == CLASSES and predictor.sample_rate_hz == SR
    assert predictor.mel_frames == MEL_FRAMES and predictor.hop_frames == 50
    assert not predictor.model.training


def test_front_end_change_warns(tmp_path, files, capsys):
    current = MelFrontEnd("mobile_fcn").fingerprint()
    key = str(tmp_path / "cache" / "toy" / "mel-mobile_fcn.zarr")

    # Only code and version drift: no warning.
    drift = {**current, "code": "0" * 16, "librosa_version": "0.0.1", "pipeline_version": "9"}
    run = _write_run(tmp_path / "drift", stores={key: {"fingerprint": drift}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrontEndChangedWarning)
        load_run(run, device="cpu")

    changed = {**current, "n_mels": 128, "f_max_hz": 7000.0}
    run = _write_run(tmp_path / "changed", stores={key: {"fingerprint": changed}})
    with pytest.warns(FrontEndChangedWarning, match="f_max_hz, n_mels") as record:
        load_run(run, device="cpu")
    assert "n_mels: 128 → 96" in str(record[0].message)

    assert main(["predict", "--run", str(run), files["one.wav"]]) == 0
    assert capsys.readouterr().err.startswith("warning: ")


def test_old_config_without_mel_frames(tmp_path):
    config = _config()
    del config["mel_frames"], config["n_mels"]
    store = tmp_path / "cache" / "toy" / "mel-mobile_fcn.zarr"
    stores = {str(store): {"fingerprint": MelFrontEnd("mobile_fcn").fingerprint()}}
    run = _write_run(tmp_path / "old", config=config, stores=stores)
    with pytest.raises(RunError, match="no mel_frames"):
        load_run(run, device="cpu")

    open_store(store, fingerprint={}, clip_ids=["a"], dim=96, max_frames=77, shard_size=1)
    predictor = load_run(run, device="cpu")
    assert predictor.mel_frames == 77


def test_mismatched_checkpoint_is_a_run_error(tmp_path):
    run = _write_run(tmp_path / "bad", config=_config(classes=["a", "b"]))
    with pytest.raises(RunError, match="do not fit"):
        load_run(run, device="cpu")
    assert main(["predict", "--run", str(run), "x.wav"]) == 2


def test_frame_rows_cover_each_file_and_average_to_its_row(predictor, files):
    names = ("long.wav", "short.wav", "cd.wav", "one.wav")
    result = predictor.predict_files([files[n] for n in names])
    frames = result.frames
    assert list(frames.columns) == ["file", "start_s", "end_s", *CLASSES]
    hop_s = 320 / SR
    # long.wav: 166 frames → windows at frames 0, 50 and 65 (end-aligned), cut at 3.3 s.
    starts = {"long.wav": [0, 50, 65], "short.wav": [0], "cd.wav": [0, 49], "one.wav": [0]}
    for name in names:
        mine = frames[frames["file"] == files[name]]
        row, probs = _row(result, files[name])
        assert len(mine) == row["windows"]
        np.testing.assert_allclose(mine["start_s"], np.array(starts[name]) * hop_s)
        assert mine["end_s"].iloc[-1] == pytest.approx(row["duration_s"])
        assert (mine["end_s"] <= row["duration_s"] + 1e-12).all()
        assert (mine["start_s"].iloc[1:].to_numpy() <= mine["end_s"].iloc[:-1].to_numpy()).all()
        lengths = (mine["end_s"] - mine["start_s"]).to_numpy()
        assert (lengths <= predictor.window_s + hop_s).all()
        # The per-file row is the mean of the file's window rows.
        np.testing.assert_allclose(mine[CLASSES].mean(axis=0), probs, atol=1e-6)
    windowed = result.by_window()
    assert (
        windowed.table is frames and windowed.top_tags(1)[0][0] == f"{files['long.wav']} 0.00-2.00s"
    )


def test_frame_rows_do_not_depend_on_batch_size(predictor, files):
    paths = [files[n] for n in ("long.wav", "short.wav", "cd.wav")]
    one = predictor.predict_files(paths, batch_size=1).frames
    many = predictor.predict_files(paths, batch_size=64).frames
    pd.testing.assert_frame_equal(
        one[["file", "start_s", "end_s"]], many[["file", "start_s", "end_s"]]
    )
    np.testing.assert_allclose(one[CLASSES], many[CLASSES], atol=1e-6)


def test_folder_and_glob_inputs_find_the_same_files(predictor, files, tmp_path):
    nested = tmp_path / "set" / "b"
    nested.mkdir(parents=True)
    shutil.copy(files["one.wav"], tmp_path / "set" / "a.wav")
    (nested / "c.flac").write_bytes(b"")  # broken: reported, the others go on
    sf.write(nested / "d.wav", _signal(20_000, SR, 3), SR)
    (nested / "notes.txt").write_text("not audio")
    want = [str(tmp_path / "set" / "a.wav"), str(nested / "c.flac"), str(nested / "d.wav")]

    by_folder = predictor.predict_files([str(tmp_path / "set")])
    by_glob = predictor.predict_files([str(tmp_path / "set" / "**" / "*.[wf]*")])
    for result in (by_folder, by_glob):
        assert list(result.table["file"]) == [want[0], want[2]]
        assert list(result.failures) == [want[1]]
        assert result.failures[want[1]].startswith("cannot decode")

    nothing = predictor.predict_files([str(tmp_path / "*.mp3"), str(tmp_path / "set" / "b" / "x")])
    assert nothing.failures[str(tmp_path / "*.mp3")] == "no file matches this pattern"
    assert nothing.failures[str(tmp_path / "set" / "b" / "x")].startswith("file not found")


def test_cli_frames_folder_and_out(run_dir, files, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("long.wav", "garbage.wav"):
        shutil.copy(files[name], folder / name)
    out = tmp_path / "frames.csv"
    args = ["predict", "--run", str(run_dir), str(folder), "--frames", "--out", str(out)]
    assert main([*args, "--batch-size", "2", "--top", "1"]) == 1
    captured = capsys.readouterr()
    assert f"{folder / 'long.wav'} 1.00-3.00s " in captured.out
    assert captured.out.splitlines()[-1] == f"{out}: probabilities of 3 windows"
    [err] = captured.err.splitlines()
    assert err.startswith(f"error: {folder / 'garbage.wav'}: cannot decode")
    table = pd.read_csv(out)
    assert list(table.columns) == ["file", "start_s", "end_s", *CLASSES]
    assert list(table["file"]) == [str(folder / "long.wav")] * 3
    np.testing.assert_allclose(table["start_s"], [0.0, 1.0, 1.3])
    np.testing.assert_allclose(table["end_s"], [2.0, 3.0, 3.3], atol=1e-4)

    (folder / "long.wav").unlink()
    assert main(["predict", "--run", str(run_dir), str(folder), "--frames"]) == 2
