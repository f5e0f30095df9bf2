"""Store fingerprints carry explicit output versions, not hashes of source files.

* Stores written by the code of the old form (``tests/data/legacy``: a musicnn store and a
  cp_resnet mel store, made before output versions existed) are current for today's code:
  extraction reuses them, and their values equal today's outputs.
* A copy of the package whose teacher and front-end files were refactored (comments, a moved
  helper) gives the same fingerprints; a copy whose outputs changed without a version bump
  fails the golden comparison (tests/golden.py), so the guard can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.manifest import make_manifest
from pipeline.extract.frontends import create_frontend
from pipeline.extract.local import extract
from pipeline.stores import read_store
from pipeline.stores.fingerprint import fingerprint_diff, upgrade
from pipeline.teachers import create_teacher

LEGACY = Path(__file__).parent / "data" / "legacy"
REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def legacy_audio(k: int) -> tuple[np.ndarray, int]:
    """The audio the legacy stores were made from (written as 16-bit WAV)."""
    rate = 16000
    t = np.arange(int(3.5 * rate)) / rate
    noise = np.random.default_rng(k).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 220 * (k + 1) * t) + 0.01 * noise).astype(np.float32), rate


@pytest.fixture(scope="module")
def legacy_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy_audio")
    paths = []
    for k in range(2):
        wave, rate = legacy_audio(k)
        sf.write(folder / f"clip{k}.wav", wave, rate, subtype="PCM_16")
        paths.append(str(folder / f"clip{k}.wav"))
    return make_manifest(
        "legacy",
        clip_ids=["a/1", "b:2"],
        paths=paths,
        splits=["train", "test"],
        classes=["x"],
        labels=np.array([[1], [0]], dtype=np.float32),
    )


@pytest.mark.parametrize(
    "store, encoder",
    [("musicnn.zarr", lambda: create_teacher("musicnn")), ("mel-cp_resnet.zarr", None)],
    ids=["musicnn", "mel-cp_resnet"],
)
def test_stores_of_the_old_form_stay_current(store, encoder, legacy_manifest, tmp_path):
    encoder = encoder() if encoder else create_frontend("cp_resnet")
    copy = tmp_path / store
    shutil.copytree(LEGACY / store, copy)
    stored = read_store(copy).fingerprint
    assert "code" in stored and "output_version" not in stored  # really the old form
    assert fingerprint_diff(stored, encoder.fingerprint()) == []
    arrays = [p for p in copy.rglob("*") if p.is_file() and p.name != "COMPLETE"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in arrays}
    summary = extract(legacy_manifest, encoder, copy, jobs=1, progress=False)
    assert (summary.shards_written, summary.shards_skipped) == (0, 1)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in arrays} == before
    # What the old code stored is what today's code computes (float16 storage aside).
    waves = [legacy_audio(k)[0] for k in range(2)]
    if encoder.sample_rate_hz != 16000:
        from pipeline.data.audio import load_audio

        waves = [load_audio(p, sr_hz=encoder.sample_rate_hz) for p in legacy_manifest.clips.path]
    else:
        waves = [sf.read(p, dtype="float32")[0] for p in legacy_manifest.clips.path]
    now = encoder.embed(waves)
    held = read_store(copy)
    for clip_id, values in zip(legacy_manifest.clip_ids, now, strict=True):
        np.testing.assert_allclose(
            held.read(clip_id).astype(np.float32), values, rtol=2e-3, atol=2e-3
        )


def test_old_form_with_another_source_hash_stays_stale():
    stored = json.loads((LEGACY / "musicnn.zarr" / "zarr.json").read_text())["attributes"]
    old = stored["fingerprint"]
    current = create_teacher("musicnn").fingerprint()
    assert fingerprint_diff(old, current) == []
    older = {**old, "code": "0123456789abcdef"}
    assert upgrade(older) == older
    assert fingerprint_diff(older, current) != []
    # Other settings are still compared after the upgrade.
    assert fingerprint_diff({**old, "layer": "penultimate"}, current) == [
        "layer: 'penultimate' → 'max_pool'"
    ]


def test_upgrade_leaves_new_fingerprints_and_checks_passt_mel_code():
    new = {"teacher": "musicnn", "output_version": 1, "code": "x"}
    assert upgrade(new) is new
    passt = {"teacher": "passt", "code": "c83d0b25aa03b48d", "pipeline_version": "0.1.0"}
    assert upgrade({**passt, "mel_code": "ae273d3016c15d14"}) == {
        "teacher": "passt",
        "output_version": 1,
        "mel_version": 1,
    }
    assert "code" in upgrade({**passt, "mel_code": "0000000000000000"})
    hear = {"teacher": "hear:some.module", "code": "bde0915dfd89ab28"}
    assert upgrade(hear) == {"teacher": "hear:some.module", "output_version": 1}


def _package_copy(tmp_path: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """A copy of ``pipeline/`` with textual edits: {relative file: [(old, new), …]}."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__py*"))
    for relative, changes in edits.items():
        path = root / "pipeline" / relative
        text = path.read_text()
        for old, new in changes:
            assert old in text, (relative, old)
            text = text.replace(old, new)
        path.write_text(text)
    return root


def _run(root: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(TESTS)])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


FINGERPRINTS = """
    import json, pipeline
    from pipeline.teachers import create_teacher
    from pipeline.extract.frontends import create_frontend
    assert pipeline.__file__.startswith({root!r}), pipeline.__file__
    print(json.dumps([create_teacher("musicnn").fingerprint(),
                      create_frontend("cp_resnet").fingerprint()], sort_keys=True))
"""


def test_refactoring_a_teacher_file_keeps_fingerprints(tmp_path):
    note = "# A comment added by a refactor.\n"
    root = _package_copy(
        tmp_path,
        {
            "teachers/musicnn.py": [
                (
                    "from __future__ import annotations\n",
                    note * 3 + "from __future__ import annotations\n",
                ),
                (
                    "def num_patches(",
                    "def _unused_helper():\n    return None\n\n\ndef num_patches(",
                ),
            ],
            "extract/frontends.py": [
                (
                    "from __future__ import annotations\n",
                    note + "from __future__ import annotations\n",
                )
            ],
            "teachers/base.py": [('"""The teacher interface', '"""The teacher base class')],
        },
    )
    after = json.loads(_run(root, FINGERPRINTS.format(root=str(root))))
    before = [create_teacher("musicnn").fingerprint(), create_frontend("cp_resnet").fingerprint()]
    assert after == json.loads(json.dumps(before, sort_keys=True))


def test_an_output_change_without_a_version_bump_fails_the_golden_test(tmp_path):
    root = _package_copy(
        tmp_path,
        {
            "teachers/musicnn.py": [("BN_EPS = 1e-3", "BN_EPS = 1e-2")],
            "extract/frontends.py": [
                ("+ config.norm_shift) / config.norm_scale", "+ config.norm_shift) / 3.0")
            ],
        },
    )
    out = _run(
        root,
        f"""
        import json, tempfile, pathlib, pipeline
        from golden import build_encoder, golden_problems
        assert pipeline.__file__.startswith({str(root)!r})
        folder = pathlib.Path(tempfile.mkdtemp())
        print(json.dumps({{n: golden_problems(n, build_encoder(n, folder))
                          for n in ("musicnn", "mel-cp_resnet", "mel-mobile_fcn")}}))
        """,
    )
    problems = json.loads(out)
    for name, found in problems.items():
        assert len(found) == 1 and "changed while output_version stayed 1" in found[0], name
