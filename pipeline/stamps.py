"""Make's view of what changed: one parameter stamp per stage, rewritten only when it changes.

``make`` runs ``python -m pipeline.stamps`` before deciding what to rebuild. For the stages the
current variables name (``DATASET``, ``TEACHER``, ``STUDENT``, …, read from the environment),
it writes ``data/stamps/<stage>-<key>.params`` holding a hash of

* the stage's parameters as given on the command line, and
* the source of the code the stage runs.

The data stage's parameters are the dataset's source: when ``CSV``, ``ROOT``, ``SPLITS`` and
``CLIPS`` are all empty, the source recorded when its manifest was built
(:mod:`pipeline.data.source`) stands in for them, so later commands need only ``DATASET=``;
paths count as absolute paths, and the sizes and modification times of the CSV and of the
audio files the manifest lists count too (editing the table, or replacing audio in place,
rebuilds the manifest, and the stores then extract the changed clips again).

A file is rewritten only when that hash differs, so its modification time moves exactly when a
stage's inputs change, and Make's ordinary timestamp rules rerun that stage and what follows it.
Only the standard library is imported here: this runs on every ``make`` call.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from pipeline.data.source import MAKE_VARIABLES, audio_digest, make_values, read_source

PACKAGE = Path(__file__).resolve().parent

COMMON = ["__init__.py", "paths.py", "fileio.py", "cli*.py", "stores/*.py", "data/*.py"]
STAGES: dict[str, tuple[list[str], list[str]]] = {
    # stage: (Make variables that are its parameters, source files it runs)
    # CSV_FILE, AUDIO: the CSV's and the audio files' sizes and times (see data_parameters)
    "data": (
        ["DATASET", "ROOT", "CSV", "SPLITS", "CLIPS", "CSV_FILE", "AUDIO"],
        ["data/datasets/*.py"],
    ),
    "extract": (
        ["DATASET", "WEIGHTS", "TEACHER_OPTS"],
        [
            "extract/*.py",
            "teachers/__init__.py",
            "teachers/tf_checkpoint.py",
            "teachers/weights.py",
            "teachers/{name}.py",
        ],
    ),
    "train": (
        ["DATASET", "TEACHER", "STUDENT", "FRONTEND", "LOSS", "LAMBDA", "KD", "SETTINGS"],
        ["train/*.py", "extract/*.py", "students/*.py"],
    ),
}


def digest(stage: str, env: dict[str, str], name: str = "") -> str:
    """Hash of a stage's parameters and code; ``name`` fills ``{name}`` in file patterns."""
    variables, patterns = STAGES[stage]
    h = hashlib.sha256(stage.encode())
    for var in variables:
        h.update(f"\0{var}={env.get(var, '')}".encode())
    files: set[Path] = set()
    for pattern in [*COMMON, *patterns]:
        files.update(PACKAGE.glob(pattern.format(name=name)))
    for path in sorted(files):
        h.update(b"\0" + path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def write_if_changed(path: Path, content: str) -> bool:
    """Write ``content`` unless the file already holds it; True if written."""
    if path.is_file() and path.read_text() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(content)
    os.replace(tmp, path)
    return True


def train_key(env: dict[str, str]) -> str:
    """The slot a training command fills: dataset, student, teacher and KD."""
    kd = "-kd" if env.get("KD", "") in ("1", "yes", "true", "True") else ""
    student = env.get("STUDENT") or "preset"
    teacher = (env.get("TEACHER") or "none").replace(":", "-")
    return f"{env.get('DATASET', '')}-{student}-{teacher}{kd}"


def data_parameters(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the data stage's source variables as that stage sees them.

    Empty ``CSV``, ``ROOT``, ``SPLITS`` and ``CLIPS`` are filled from the dataset's recorded
    source, if any; paths become absolute; ``CSV_FILE`` holds the CSV's size and modification
    time (empty without a readable CSV), ``AUDIO`` a hash of the sizes and times of the audio
    files the manifest was built from (:func:`pipeline.data.source.audio_digest`).
    """
    values = {variable: env.get(variable, "") for variable in MAKE_VARIABLES}
    if not any(values.values()):
        record = read_source(env.get("DATA", "data"), env.get("DATASET", ""))
        values = make_values(record) if record else values
    for variable in ("ROOT", "CSV", "SPLITS"):
        values[variable] = os.path.abspath(values[variable]) if values[variable] else ""
    try:
        info = os.stat(values["CSV"]) if values["CSV"] else None
    except OSError:
        info = None
    values["CSV_FILE"] = f"{info.st_size}:{info.st_mtime_ns}" if info else ""
    values["AUDIO"] = audio_digest(env.get("DATA", "data"), env.get("DATASET", ""))
    return {**env, **values}


def _is_teacher(store: str) -> bool:
    """Whether a store is named after a teacher (so Make can extract it by that name)."""
    name = store.replace(":", "-")
    return name.startswith("hear-") or (PACKAGE / "teachers" / f"{name}.py").is_file()


def stamps_for(env: dict[str, str]) -> dict[str, str]:
    """Stamp file name → content for the stages the variables in ``env`` describe."""
    dataset = env.get("DATASET", "")
    out = {f"data-{dataset}": digest("data", data_parameters(env))}
    teachers = {t for t in (env.get("TEACHER") or "").split("+") if t and t != "none"}
    if env.get("STORE"):
        teachers.add(env["STORE"])
    # make probes TEACHERS="a b": the stores named after a teacher, which Make may extract.
    teachers |= {t for t in (env.get("TEACHERS") or "").split() if _is_teacher(t)}
    for teacher in sorted(teachers):
        # hear:<module> (store hear-<module>) runs teachers/hear.py; the module is a parameter.
        code = "hear" if teacher.startswith(("hear:", "hear-")) else teacher
        key = f"extract-{dataset}-{teacher.replace(':', '-')}"
        out[key] = digest("extract", env, code)
    out[f"train-{train_key(env)}"] = digest("train", env)
    return out


def refresh_data_stamp(data_dir: str | os.PathLike, dataset: str) -> bool:
    """Rewrite the data stage's stamp as the next ``make`` will compute it.

    The stamp covers the manifest's source record and audio list, which the ``data`` command
    writes; it calls this after writing them and before writing the manifest, so the manifest
    is newer than its stamp and the next ``make`` finds the stage done (not run twice).
    Make's variables are read from the environment, as ``make`` exports them.

    Returns True if the stamp was rewritten.
    """
    env = {**os.environ, "DATA": str(data_dir), "DATASET": dataset}
    return write_stamp(data_dir, f"data-{dataset}", digest("data", data_parameters(env)))


def write_stamp(data_dir: str | os.PathLike, name: str, content: str) -> bool:
    """Write ``<data_dir>/stamps/<name>.params`` unless it already holds ``content``."""
    return write_if_changed(Path(data_dir) / "stamps" / f"{name}.params", content + "\n")


def main() -> int:
    env = dict(os.environ)
    for name, content in stamps_for(env).items():
        write_stamp(env.get("DATA", "data"), name, content)
    if "--print-train-key" in sys.argv:
        print(train_key(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
