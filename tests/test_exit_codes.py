"""Exit status of every stage on a user error: 2, with one ``error:`` line and no traceback.

The project's rule: 0 = all done, 1 = done but some clips or files failed (Make carries on),
2 = an error. Each stage of the parser must have at least one case here, so a new stage
without one fails :func:`test_every_stage_has_a_case`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import COMMANDS, main
from pipeline.cli_parser import build_parser

# Stage → (arguments, a fragment of the message); "{tmp}" is a folder with nothing in it and
# "mine" a dataset whose manifest exists (built by the ``data_dir`` fixture).
CASES: dict[str, list[tuple[list[str], str]]] = {
    "data": [
        (["data", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
        (["data", "other", "--csv", "{tmp}/absent.csv"], "no CSV file"),
    ],
    "extract": [
        (["extract", "no_such_dataset", "musicnn"], "no manifest for dataset 'no_such_dataset'"),
        (["extract", "mine", "no_such_teacher"], "unknown teacher 'no_such_teacher'"),
        (["extract", "mine", "hear:no_such_module"], "HEAR module 'no_such_module'"),
        (["extract", "mine", "musicnn", "-o", "nosuch=1"], "teacher musicnn has no option nosuch"),
    ],
    "mels": [
        (["mels", "no_such_dataset"], "no manifest for dataset 'no_such_dataset'"),
        (["mels", "mine", "--frontend", "no_such_frontend"], "invalid choice"),
    ],
    "export": [(["export", "mine", "no_such_store"], "no clip store")],
    "inspect": [(["inspect", "{tmp}/absent.zarr"], "no clip store")],
    "train": [
        (["train", "no_such_dataset"], "no manifest for dataset 'no_such_dataset'"),
        (["train", "mine", "student=no_such_student"], "unknown student 'no_such_student'"),
        (["train", "mine", "frontend=no_such_frontend"], "unknown front end 'no_such_frontend'"),
        (["train", "mine", "--preset", "no_such_preset"], "unknown preset 'no_such_preset'"),
        (["train", "mine", "no_such_setting=1"], "no_such_setting"),
    ],
    "compare": [
        (["compare", "no_such_dataset", "musicnn"], "no manifest for dataset 'no_such_dataset'")
    ],
    "paper": [
        (["paper", "openmic"], "no manifest for dataset 'openmic'"),
        (["paper", "no_such_dataset"], "invalid choice"),
    ],
    "probes": [
        (["probes", "no_such_dataset", "musicnn"], "no manifest for dataset 'no_such_dataset'"),
        (["probes", "mine", "no_such_store"], "no store 'no_such_store'"),
        (["probes", "mine", "--seeds", "0"], "expected a positive integer"),
    ],
    "eval": [(["eval", "no_such_dataset"], "no manifest for dataset 'no_such_dataset'")],
    "report": [(["report", "mine"], "no runs for dataset 'mine'")],
    "predict": [(["predict", "{tmp}/absent.wav", "--run", "{tmp}/no_run"], "no checkpoint")],
    "onnx": [(["onnx", "--run", "{tmp}/no_run"], "no checkpoint")],
}


def parser_stages() -> list[str]:
    """The stages the parser offers (argparse keeps its subparsers in a private list)."""
    (stages,) = [a.choices for a in build_parser()._actions if a.dest == "command"]
    return sorted(stages)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the manifest of a two-clip dataset ``mine``."""
    root = tmp_path_factory.mktemp("exit_codes")
    for clip in ("a", "b"):
        sf.write(root / f"{clip}.wav", np.zeros(800), 8000)
    table = root / "clips.csv"
    table.write_text("clip_id,path,split,piano\na,a.wav,train,1\nb,b.wav,test,0\n")
    assert main(["--data-dir", str(root / "data"), "data", "mine", "--csv", str(table)]) == 0
    return root / "data"


def test_every_stage_has_a_case() -> None:
    assert parser_stages() == sorted(CASES) == sorted(COMMANDS)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [case for stage in CASES.values() for case in stage],
    ids=[" ".join(argv) for stage in CASES.values() for argv, _ in stage],
)
def test_user_error_exits_2_with_one_error_line(
    argv: list[str], fragment: str, data_dir: Path, tmp_path: Path, capsys
) -> None:
    capsys.readouterr()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        status = main(["--data-dir", str(data_dir), *argv])
        usage_error = False
    except SystemExit as exit_:  # argparse: usage lines, then one "pipeline STAGE: error:" line
        status, usage_error = exit_.code, True
    err = capsys.readouterr().err

    assert status == 2, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error: " in line]
    assert fragment in line
    if not usage_error:
        assert err == line + "\n" and line.startswith("error: ")


def test_a_crash_exits_2_with_its_traceback(data_dir: Path, monkeypatch, capsys) -> None:
    """An exception nobody expected is a fault, not "done, some clips failed" (status 1, which
    Make lets pass): status 2, the traceback for a report, then one ``error:`` line."""

    def broken(args: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setitem(COMMANDS, "eval", broken)
    assert main(["--data-dir", str(data_dir), "eval", "mine"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err
    assert err.splitlines()[-1] == "error: unexpected KeyError (traceback above)"
