"""Make's view of what changed: one parameter stamp per stage, rewritten only when it changes.

``make`` runs ``python -m pipeline.stamps`` before deciding what to rebuild. For the stages the
current variables name (``DATASET``, ``TEACHER``, ``STUDENT``, …, read from the environment),
it writes ``data/stamps/<stage>-<key>.params`` holding a hash of

* the stage's parameters as given on the command line, and
* the source of the code the stage runs.

A file is rewritten only when that hash differs, so its modification time moves exactly when a
stage's inputs change, and Make's ordinary timestamp rules rerun that stage and what follows it.
Only the standard library is imported here: this runs on every ``make`` call.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

COMMON = ["__init__.py", "paths.py", "fileio.py", "cli*.py", "stores/*.py", "data/*.py"]
STAGES: dict[str, tuple[list[str], list[str]]] = {
    # stage: (Make variables that are its parameters, source files it runs)
    "data": (["DATASET", "ROOT", "CSV", "SPLITS", "CLIPS"], ["data/datasets/*.py"]),
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


def stamps_for(env: dict[str, str]) -> dict[str, str]:
    """Stamp file name → content for the stages the variables in ``env`` describe."""
    dataset = env.get("DATASET", "")
    out = {f"data-{dataset}": digest("data", env)}
    teachers = {t for t in (env.get("TEACHER") or "").split("+") if t and t != "none"}
    if env.get("STORE"):
        teachers.add(env["STORE"])
    for teacher in sorted(teachers):
        # hear:<module> (store hear-<module>) runs teachers/hear.py; the module is a parameter.
        code = "hear" if teacher.startswith(("hear:", "hear-")) else teacher
        key = f"extract-{dataset}-{teacher.replace(':', '-')}"
        out[key] = digest("extract", env, code)
    out[f"train-{train_key(env)}"] = digest("train", env)
    return out


def main() -> int:
    stamps = Path(os.environ.get("DATA", "data")) / "stamps"
    env = dict(os.environ)
    for name, content in stamps_for(env).items():
        write_if_changed(stamps / f"{name}.params", content + "\n")
    if "--print-train-key" in sys.argv:
        print(train_key(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
