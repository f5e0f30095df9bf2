"""ONNX export of a student with its front end, checked with ONNX Runtime against PyTorch."""

import json

import numpy as np
import pytest
from test_predict import CLASSES, MEL_FRAMES, SR, _signal, _write_run

from pipeline.cli import main
from pipeline.inference.onnx_export import export_onnx, read_metadata
from pipeline.inference.predict import load_run

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = _write_run(tmp_path_factory.mktemp("runs") / "toy" / "cp_resnet-none-0000")
    return run, export_onnx(run)


@pytest.mark.slow
def test_onnx_equals_the_predictor_on_one_window(exported):
    run, result = exported
    assert result.path == run / "student.onnx" and result.max_abs_diff < 1e-4
    predictor = load_run(run, device="cpu")
    window = (MEL_FRAMES - 1) * 320 + 1  # the pre-emphasis drops one sample
    waves = np.stack([_signal(window, SR, seed) for seed in range(3)])
    want = np.stack(
        [predictor.window_probabilities(predictor.windows(predictor.mel(w)))[0] for w in waves]
    )
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {"waveform": waves})
    assert got.shape == (3, len(CLASSES))
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Batch and length are dynamic.
    [other] = session.run(None, {"waveform": waves[:1, : window // 2]})
    assert other.shape == (1, len(CLASSES)) and np.all((other > 0) & (other < 1))


@pytest.mark.slow
def test_metadata_and_cli(exported, tmp_path, capsys):
    run, result = exported
    meta = read_metadata(result.path)
    assert json.loads(meta["classes"]) == CLASSES
    assert (meta["sample_rate_hz"], meta["window_samples"]) == (
        str(SR),
        str((MEL_FRAMES - 1) * 320 + 1),
    )
    assert (meta["frontend"], meta["student"], meta["run"]) == ("mobile_fcn", "cp_resnet", run.name)
    assert meta == result.metadata

    out = tmp_path / "elsewhere" / "tagger.onnx"
    assert main(["onnx", "--run", str(run), "-o", str(out), "--no-check"]) == 0
    assert out.is_file() and not list(out.parent.glob("*.partial"))
    assert f"{out}: " in capsys.readouterr().out


def test_missing_run_says_what_to_do(tmp_path, capsys):
    assert main(["onnx", "--run", str(tmp_path / "runs" / "toy" / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
