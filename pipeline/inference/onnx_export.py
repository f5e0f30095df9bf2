"""A trained student as one ONNX file: mono waveform in, tag probabilities out.

    exported = export_onnx("data/runs/demo/cp_resnet-musicnn-1a2b3c4d")
    # → data/runs/demo/cp_resnet-musicnn-1a2b3c4d/student.onnx

The graph holds the run's mel front end (STFT, mel filterbank, log, normalisation), the rounding
of log-mels to the mel store's float16 and the student, so any ONNX runtime can tag audio
without this package:

* input ``waveform``: (batch, samples) float32, mono, in [-1, 1], at the ``sample_rate_hz``
  named in the file's metadata; batch and samples are dynamic;
* output ``probabilities``: (batch, classes) sigmoid outputs, classes in the order of the
  metadata's ``classes``.

The student saw windows of ``window_samples`` samples in training; tag longer audio the way
``pipeline predict`` does: windows of that length every half window, the last one aligned to the
end, and the mean of their probabilities. Near window edges the mel frames differ slightly from
those of a whole-file spectrogram sliced into windows (the STFT pads each input at its ends).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.extract.frontends import num_samples
from pipeline.fileio import atomic_path
from pipeline.inference.predict import MEL_STORE_DTYPE, Predictor, load_run

ONNX_NAME = "student.onnx"
OPSET = 18


class WaveformTagger(nn.Module):
    """Front end, float16 rounding and student in one module: (N, samples) → (N, classes)."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.frontend = predictor.frontend.module
        self.student = predictor.model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(N, samples) float32 mono audio at the front end's rate → (N, classes) probabilities."""
        mel = self.frontend(waveform)  # (N, n_mels, frames)
        mel = mel.to(getattr(torch, np.dtype(MEL_STORE_DTYPE).name)).to(torch.float32)
        logits, _ = self.student(mel)
        return torch.sigmoid(logits)


@dataclass(frozen=True)
class ExportedModel:
    """Where the model went and how closely ONNX Runtime reproduced PyTorch on it.

    ``max_abs_diff`` is the largest |ONNX − PyTorch| probability over the check inputs, or
    ``None`` when the check was not run.
    """

    path: Path
    metadata: dict[str, str]
    max_abs_diff: float | None


def export_onnx(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    check: bool = True,
    seed: int = 0,
) -> ExportedModel:
    """Export a run's ``best.pt`` with its front end to ONNX (opset 18, dynamic batch/length).

    Parameters
    ----------
    run : run folder or checkpoint file
    out : ONNX file to write (default: ``student.onnx`` in the run folder); written atomically
    check : run the file with ONNX Runtime on random audio (one window, and 1.7 windows in a
        batch of 2) and compare it with PyTorch; raises ``RuntimeError`` above 1e-4
    seed : seed of the check's random audio

    Returns
    -------
    ExportedModel -- the file, its metadata and the check's largest difference

    Raises
    ------
    RuntimeError
        When ONNX Runtime's probabilities differ from PyTorch's by more than 1e-4.
    """
    try:
        import onnx
    except ImportError as err:
        raise ImportError("ONNX export needs the onnx extra: pip install -e '.[onnx]'") from err

    predictor = load_run(run, device="cpu")
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    out = Path(out) if out is not None else run_dir / ONNX_NAME
    tagger = WaveformTagger(predictor).eval()
    config = predictor.frontend.config
    window = num_samples(
        predictor.mel_frames, config.hop_length, preemphasis=config.preemphasis is not None
    )
    metadata = {
        "classes": json.dumps(predictor.classes),
        "sample_rate_hz": str(predictor.sample_rate_hz),
        "window_samples": str(window),
        "frontend": predictor.frontend.preset,
        "student": str(predictor.config.get("student", "")),
        "teacher": str(predictor.config.get("teacher", "")),
        "run": run_dir.name,
        "input": "waveform: (batch, samples) float32 mono in [-1, 1] at sample_rate_hz",
        "output": "probabilities: (batch, classes), classes in the order of 'classes'",
    }

    example = torch.zeros(2, window)
    samples = torch.export.Dim("samples", min=config.n_fft, max=2**31 - 1)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with warnings.catch_warnings():
        # The exporter's deprecation notes and its "torchvision is not installed" log lines.
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                tagger,
                (example,),
                input_names=["waveform"],
                output_names=["probabilities"],
                dynamic_shapes=({0: torch.export.Dim("batch"), 1: samples},),
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
        finally:
            exporter_log.setLevel(level)
    model = program.model_proto
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(out) as tmp:
        onnx.save(model, tmp)

    diff = _max_abs_diff(out, tagger, window, seed) if check else None
    if diff is not None and diff > 1e-4:
        raise RuntimeError(f"{out}: ONNX Runtime differs from PyTorch by {diff:.2e}")
    return ExportedModel(out, metadata, diff)


def _max_abs_diff(path: Path, tagger: nn.Module, window: int, seed: int) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    diffs = []
    for shape in [(1, window), (2, window * 17 // 10)]:
        audio = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        [got] = session.run(None, {"waveform": audio})
        with torch.inference_mode():
            want = tagger(torch.from_numpy(audio)).numpy()
        diffs.append(float(np.abs(got - want).max()))
    return max(diffs)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata an exported file carries.

    Parameters
    ----------
    path : an ONNX file written by :func:`export_onnx`

    Returns
    -------
    dict[str, str] -- metadata key → value (``classes`` is a JSON list)
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}
