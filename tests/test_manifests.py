"""Dataset adapters on tiny releases written here in the real formats."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from stand_ins import OPENMIC_CLASSES, openmic_keys

from pipeline.data.datasets import build_manifest
from pipeline.data.datasets.csv import csv_table
from pipeline.data.datasets.magnatagatune import magnatagatune
from pipeline.data.datasets.openmic import openmic, validation_keys
from pipeline.data.manifest import Manifest, ManifestError

SILENCE = np.zeros(1600, dtype=np.float32)  # 0.1 s at 16 kHz


def assert_round_trip(manifest: Manifest, tmp_path: Path) -> None:
    back = Manifest.read(manifest.write(tmp_path / "out" / f"{manifest.name}.parquet"))
    assert (back.name, back.classes) == (manifest.name, manifest.classes)
    pd.testing.assert_frame_equal(back.clips, manifest.clips)


def assert_paths_absolute_and_present(manifest: Manifest) -> None:
    paths = [Path(p) for p in manifest.clips["path"]]
    assert all(p.is_absolute() and p.is_file() for p in paths)
    assert np.allclose(manifest.clips["duration_s"], 0.1, atol=0.01)


# ---------------------------------------------------------------- OpenMIC-2018

N_TRAIN, N_TEST = 20, 4


def write_openmic(root: Path, seed: int = 0) -> dict[str, object]:
    """25 keys: 20 train, 4 test, 1 in no partition. Returns what the test needs to check."""
    keys = openmic_keys(N_TRAIN + N_TEST + 1)
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0.0, 0.2, 0.5, 0.8, 1.0], size=(len(keys), 20))
    y_mask = rng.random((len(keys), 20)) < 0.6
    y_true[0, :3], y_mask[0, :3] = [1.0, 0.5, 0.0], True
    y_true[0, 3], y_mask[0, 3] = 0.9, False
    np.savez(
        root / "openmic-2018.npz",
        X=rng.integers(0, 256, size=(len(keys), 10, 128), dtype=np.int64),
        Y_true=y_true,
        Y_mask=y_mask,
        sample_key=np.array(keys, dtype=object),
    )
    # Written in reverse index order: the adapter must order classes by index, not file order.
    class_map = {c: i for i, c in reversed(list(enumerate(OPENMIC_CLASSES)))}
    (root / "class-map.json").write_text(json.dumps(class_map))
    (root / "partitions").mkdir()
    train, test = keys[:N_TRAIN], keys[N_TRAIN : N_TRAIN + N_TEST]
    (root / "partitions/split01_train.csv").write_text("".join(f"{k}\n" for k in train))
    (root / "partitions/split01_test.csv").write_text("".join(f"{k}\n" for k in test))
    for key in keys:
        path = root / "audio" / key[:3] / f"{key}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, SILENCE, 16000, format="OGG", subtype="VORBIS")
    return {"keys": keys, "train": train, "test": test, "y_true": y_true, "y_mask": y_mask}


def test_openmic_labels_splits_and_round_trip(tmp_path: Path) -> None:
    release = write_openmic(tmp_path)
    manifest = build_manifest("openmic", root=tmp_path, valid_fraction=None, seed=None)

    assert manifest.name == "openmic"
    assert manifest.classes == tuple(OPENMIC_CLASSES)
    keys = release["keys"]
    assert manifest.clip_ids == keys[: N_TRAIN + N_TEST]  # the unpartitioned key is left out
    counts = manifest.clips["split"].value_counts().to_dict()
    # Random(2022)'s draws below 0.15 among the first 20 fall at positions 3 and 15.
    assert counts == {"train": 18, "valid": 2, "test": 4}
    assert set(manifest.split("test").clip_ids) == set(release["test"])

    y_true, y_mask = release["y_true"][: N_TRAIN + N_TEST], release["y_mask"][: N_TRAIN + N_TEST]
    np.testing.assert_array_equal(manifest.mask(), y_mask & (y_true != 0.5))
    np.testing.assert_array_equal(manifest.labels(), (y_true > 0.5) & manifest.mask())
    first = manifest.clips.iloc[0]
    assert (first["accordion"], first["bass"]) == (1, 0)
    assert pd.isna(first["banjo"])  # Y_true == 0.5 → unknown
    assert pd.isna(first["cello"])  # Y_true == 0.9 but Y_mask False → unknown

    key = keys[0]
    assert first["path"] == str((tmp_path / "audio" / key[:3] / f"{key}.ogg").absolute())
    assert_paths_absolute_and_present(manifest)
    assert_round_trip(manifest, tmp_path)


def test_openmic_valid_split_is_deterministic(tmp_path: Path) -> None:
    release = write_openmic(tmp_path)

    def valid_keys(**options: object) -> set[str]:
        return set(openmic(root=tmp_path, **options).split("valid").clip_ids)

    chosen = valid_keys()
    train = release["train"]
    # One draw per training key in archive order: positions 3 and 15 fall below 0.15.
    assert chosen == {train[3], train[15]}
    assert valid_keys(seed=2022) == chosen
    assert valid_keys(seed=7) != chosen
    assert valid_keys(valid_fraction=0.0) == set()

    # The split does not depend on the order of lines in the partition file.
    partition = tmp_path / "partitions/split01_train.csv"
    partition.write_text("".join(f"{k}\n" for k in reversed(train)))
    assert valid_keys() == chosen


# Positions (in the sorted split01 train list of 14,915 keys) of the 2,223 keys of the official
# EAsT validation list openmic_valid.json: their count and the sha256 of "p0,p1,...".
OFFICIAL_VALID_COUNT = 2223
OFFICIAL_VALID_POSITIONS_SHA256 = "6869f138df64be68f59d91a6381f9688e47b8c3f2b4d4f2063c5d46187e8f1f8"


def test_openmic_validation_keys_match_the_official_list() -> None:
    # The draws depend on positions only, so 14,915 stand-in keys select the same positions.
    keys = [f"{i:06d}_0" for i in range(14_915)]
    chosen = validation_keys(keys)
    positions = sorted(int(key[:6]) for key in chosen)
    assert len(positions) == OFFICIAL_VALID_COUNT
    digest = hashlib.sha256(",".join(map(str, positions)).encode()).hexdigest()
    assert digest == OFFICIAL_VALID_POSITIONS_SHA256
    assert positions[:8] == [3, 15, 22, 25, 28, 29, 30, 34]


@pytest.mark.parametrize(
    "missing", ["openmic-2018.npz", "class-map.json", "partitions/split01_test.csv"]
)
def test_openmic_missing_release_file(tmp_path: Path, missing: str) -> None:
    write_openmic(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ManifestError, match=re.escape(missing)):
        openmic(root=tmp_path)


def test_openmic_missing_audio_is_listed(tmp_path: Path) -> None:
    keys = write_openmic(tmp_path)["keys"]
    for key in keys[2:4]:
        (tmp_path / "audio" / key[:3] / f"{key}.ogg").unlink()
    manifest = openmic(root=tmp_path)
    assert manifest.clip_ids == keys[:2] + keys[4 : N_TRAIN + N_TEST]
    assert [(r.clip_id, r.cause) for r in manifest.rejected] == [
        (key, f"audio file does not exist: {tmp_path / 'audio' / key[:3] / f'{key}.ogg'}")
        for key in keys[2:4]
    ]


def test_openmic_wrong_root_rejects_everything(tmp_path: Path) -> None:
    write_openmic(tmp_path)
    shutil.rmtree(tmp_path / "audio")
    with pytest.raises(ManifestError, match="24 of 24 clips rejected") as err:
        openmic(root=tmp_path)
    assert "audio file does not exist" in str(err.value)


def test_openmic_partition_key_not_in_archive(tmp_path: Path) -> None:
    write_openmic(tmp_path)
    with (tmp_path / "partitions/split01_test.csv").open("a") as f:
        f.write("999999_0\n")
    with pytest.raises(ManifestError, match="999999_0"):
        openmic(root=tmp_path)


def test_openmic_duplicate_key_in_archive(tmp_path: Path) -> None:
    keys = write_openmic(tmp_path)["keys"]
    with np.load(tmp_path / "openmic-2018.npz", allow_pickle=True) as archive:
        arrays = dict(archive)
    arrays["sample_key"][-1] = keys[0]  # the key in no partition becomes a duplicate
    np.savez(tmp_path / "openmic-2018.npz", **arrays)
    with pytest.raises(ManifestError, match="duplicate clip IDs") as err:
        openmic(root=tmp_path)
    assert keys[0] in str(err.value)


# ---------------------------------------------------------------- MagnaTagATune

N_CLIPS = 32
FOLDERS = "0123456789abcdef"
MTAT_TAGS = ["no voice", "guitar", "classical", "female vocal"] + [
    f"tag{i:03d}" for i in range(184)
]  # 188 tag columns, as in the release


def mtat_path(row: int) -> str:
    return f"{FOLDERS[row % 16]}/artist_{row}-album-{row}-track-0-29.mp3"


def mtat_clip_id(row: int) -> str:
    return str(2 + 3 * row)  # real clip IDs are neither row numbers nor contiguous


def mtat_tag_matrix() -> np.ndarray:
    """Counts: guitar 20, classical 15, no voice 11, tag050 3 (only on clips without the others)."""
    tags = np.zeros((N_CLIPS, len(MTAT_TAGS)), dtype=int)
    col = {t: i for i, t in enumerate(MTAT_TAGS)}
    tags[0:20, col["guitar"]] = 1
    tags[10:25, col["classical"]] = 1
    tags[[*range(10), 28], col["no voice"]] = 1
    tags[25:28, col["tag050"]] = 1
    return tags


def write_mtat(root: Path, *, audio_under_mp3: bool = True) -> None:
    """annotations_final.csv (quoted, tab-separated, CRLF, 190 columns) and 32 tiny mp3s."""
    tags = mtat_tag_matrix()
    header = ["clip_id", *MTAT_TAGS, "mp3_path"]
    lines = [header] + [[mtat_clip_id(r), *map(str, tags[r]), mtat_path(r)] for r in range(N_CLIPS)]
    text = "".join("\t".join(f'"{v}"' for v in line) + "\r\n" for line in lines)
    assert len(header) == 190
    (root / "annotations_final.csv").write_bytes(text.encode())
    audio_root = root / "mp3" if audio_under_mp3 else root
    for r in range(N_CLIPS):
        path = audio_root / mtat_path(r)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, SILENCE, 16000, format="MP3")


SPLIT_ROWS = {"train": [0, 3, 5, 9, 17, 30], "valid": [12, 28], "test": [13, 31, 14]}


def write_mtat_split(split_dir: Path) -> tuple[list[str], np.ndarray]:
    """The cleaned split's files: 50 tags, binary rows for every annotation row."""
    split_dir.mkdir()
    tags = np.array(MTAT_TAGS[::-1][:50])  # deliberately not the annotations' order
    binary = np.random.default_rng(1).integers(0, 2, size=(N_CLIPS, 50)).astype(np.float64)
    np.save(split_dir / "tags.npy", tags)
    np.save(split_dir / "binary.npy", binary)
    for split, rows in SPLIT_ROWS.items():
        np.save(split_dir / f"{split}.npy", np.array([f"{r}\t{mtat_path(r)}" for r in rows]))
    return tags.tolist(), binary


@pytest.mark.parametrize("audio_under_mp3", [True, False])
def test_mtat_fallback_split(tmp_path: Path, audio_under_mp3: bool) -> None:
    write_mtat(tmp_path, audio_under_mp3=audio_under_mp3)
    manifest = magnatagatune(root=tmp_path, top_k=3)

    assert manifest.classes == ("guitar", "classical", "no voice")  # by count, descending
    kept = [*range(25), 28]  # rows 25–27 only have tag050, 29–31 no tag at all
    assert manifest.clip_ids == [mtat_clip_id(r) for r in kept]
    expected_split = {"c": "valid", "d": "test", "e": "test", "f": "test"}
    assert manifest.clips["split"].tolist() == [
        expected_split.get(mtat_path(r)[0], "train") for r in kept
    ]
    assert manifest.clips["split"].value_counts().to_dict() == {
        "train": 21, "valid": 2, "test": 3,
    }  # fmt: skip
    cols = [MTAT_TAGS.index(t) for t in manifest.classes]
    np.testing.assert_array_equal(manifest.labels(), mtat_tag_matrix()[kept][:, cols])
    assert manifest.mask().all()
    audio_root = tmp_path / "mp3" if audio_under_mp3 else tmp_path
    assert manifest.clips["path"].iloc[0] == str((audio_root / mtat_path(0)).absolute())
    assert_paths_absolute_and_present(manifest)
    assert_round_trip(manifest, tmp_path)


def test_mtat_default_top_k_is_50(tmp_path: Path) -> None:
    write_mtat(tmp_path)
    manifest = build_manifest("magnatagatune", root=tmp_path, split_dir=None, top_k=None)
    assert len(manifest.classes) == 50
    assert manifest.classes[:3] == ("guitar", "classical", "no voice")


def test_mtat_with_split_files(tmp_path: Path) -> None:
    write_mtat(tmp_path)
    tags, binary = write_mtat_split(tmp_path / "split")
    manifest = magnatagatune(root=tmp_path, split_dir=tmp_path / "split")

    assert manifest.classes == tuple(tags)
    rows = [r for split in ("train", "valid", "test") for r in SPLIT_ROWS[split]]
    assert manifest.clip_ids == [mtat_clip_id(r) for r in rows]
    assert manifest.clips["split"].value_counts().to_dict() == {"train": 6, "valid": 2, "test": 3}
    assert manifest.split("valid").clip_ids == [mtat_clip_id(r) for r in SPLIT_ROWS["valid"]]
    np.testing.assert_array_equal(manifest.labels(), binary[rows])
    assert manifest.mask().all()
    assert_paths_absolute_and_present(manifest)
    assert_round_trip(manifest, tmp_path)


def test_mtat_split_entry_not_in_annotations(tmp_path: Path) -> None:
    write_mtat(tmp_path)
    write_mtat_split(tmp_path / "split")
    np.save(tmp_path / "split/valid.npy", np.array(["12\tc/unknown-clip.mp3"]))
    with pytest.raises(ManifestError, match=r"c/unknown-clip\.mp3"):
        magnatagatune(root=tmp_path, split_dir=tmp_path / "split")


def test_mtat_missing_split_file(tmp_path: Path) -> None:
    write_mtat(tmp_path)
    write_mtat_split(tmp_path / "split")
    (tmp_path / "split/binary.npy").unlink()
    with pytest.raises(ManifestError, match=r"binary\.npy"):
        magnatagatune(root=tmp_path, split_dir=tmp_path / "split")


def test_mtat_missing_annotations(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"annotations_final\.csv"):
        magnatagatune(root=tmp_path)


def test_mtat_missing_audio_is_listed(tmp_path: Path) -> None:
    write_mtat(tmp_path)
    (tmp_path / "mp3" / mtat_path(5)).unlink()
    manifest = magnatagatune(root=tmp_path, top_k=3)
    assert mtat_clip_id(5) not in manifest.clip_ids and len(manifest) == 25
    [rejected] = manifest.rejected
    assert rejected.clip_id == mtat_clip_id(5)
    assert rejected.cause == f"audio file does not exist: {tmp_path / 'mp3' / mtat_path(5)}"


# ---------------------------------------------------------------- generic CSV


def write_csv(tmp_path: Path, rows: list[str], header: str = "clip_id,path,split,piano,voice"):
    (tmp_path / "audio").mkdir(exist_ok=True)
    for name in ("a", "b", "c"):
        sf.write(tmp_path / "audio" / f"{name}.wav", SILENCE, 16000)
    csv = tmp_path / "my_clips.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    return csv


def test_csv_table(tmp_path: Path) -> None:
    absolute = (tmp_path / "audio" / "b.wav").absolute()
    csv = write_csv(
        tmp_path,
        ["a,audio/a.wav,train,1,0", f"b,{absolute},valid,0,", "c,audio/c.wav,test, ,1"],
    )
    manifest = build_manifest("csv", csv=csv, name=None)

    assert manifest.name == "my_clips"
    assert manifest.classes == ("piano", "voice")
    assert manifest.clip_ids == ["a", "b", "c"]
    assert manifest.clips["split"].tolist() == ["train", "valid", "test"]
    assert manifest.clips["path"].tolist() == [
        str((tmp_path / "audio" / f"{n}.wav").absolute()) for n in "abc"
    ]
    np.testing.assert_array_equal(manifest.labels(), [[1, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(manifest.mask(), [[True, True], [True, False], [False, True]])
    assert_paths_absolute_and_present(manifest)
    assert_round_trip(manifest, tmp_path)
    assert csv_table(csv=csv, name="renamed").name == "renamed"


def test_csv_missing_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, ["a,1"], header="clip_id,piano")
    with pytest.raises(ManifestError, match="required columns") as err:
        csv_table(csv=csv)
    assert "'path'" in str(err.value) and "'split'" in str(err.value)


def test_csv_bad_label_values(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path, ["a,audio/a.wav,train,1,yes", "b,audio/b.wav,train,0,1", "c,audio/c.wav,test,2,"]
    )
    with pytest.raises(ManifestError, match="1, 0 or blank") as err:
        csv_table(csv=csv)
    message = str(err.value)
    assert "a/voice='yes'" in message and "c/piano='2'" in message
    assert "b/" not in message


@pytest.mark.parametrize("na_rep", ["", "NaN"])
def test_csv_labels_written_by_pandas(tmp_path: Path, na_rep: str) -> None:
    write_csv(tmp_path, [])
    table = pd.DataFrame(
        {
            "clip_id": ["a", "b", "c"],
            "path": [f"audio/{n}.wav" for n in "abc"],
            "split": ["train", "valid", "test"],
            "piano": [1, None, 0],  # an int column with a gap: pandas makes it 1.0, NaN, 0.0
            "voice": [True, False, True],
        }
    )
    assert table["piano"].dtype == float
    csv = tmp_path / "from_pandas.csv"
    table.to_csv(csv, index=False, na_rep=na_rep)
    assert "1.0" in csv.read_text() and "True" in csv.read_text()

    manifest = csv_table(csv=csv)

    np.testing.assert_array_equal(manifest.labels(), [[1, 1], [0, 0], [0, 1]])
    np.testing.assert_array_equal(manifest.mask(), [[True, True], [False, True], [True, True]])


def test_csv_label_spellings_in_any_case(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path,
        [
            "a,audio/a.wav,train,TRUE,false",
            "b,audio/b.wav,train, nan ,1.0",
            "c,audio/c.wav,test,0.0,NAN",
        ],
    )
    manifest = csv_table(csv=csv)
    np.testing.assert_array_equal(manifest.labels(), [[1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(manifest.mask(), [[True, True], [False, True], [True, False]])


def test_csv_other_label_values_are_refused_with_a_count(tmp_path: Path) -> None:
    rows = [f"x{i},audio/a.wav,train,0.5,1" for i in range(11)] + ["y,audio/b.wav,train,1,2.0"]
    with pytest.raises(ManifestError, match="1, 0 or blank") as err:
        csv_table(csv=write_csv(tmp_path, rows))
    message = str(err.value)
    assert "x0/piano='0.5'" in message and "… and 2 more" in message
    assert "voice='1'" not in message


def test_csv_duplicate_ids(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path,
        [
            "a,audio/a.wav,train,1,0",
            "b,audio/b.wav,valid,0,1",
            "a,audio/b.wav,test,0,1",
            "c,audio/c.wav,test,1,1",
            "a,audio/c.wav,train,1,1",
        ],
    )
    manifest = csv_table(csv=csv)
    assert manifest.clip_ids == ["a", "b", "c"]
    assert manifest.clips["path"].iloc[0] == str((tmp_path / "audio" / "a.wav").absolute())
    assert [str(r) for r in manifest.rejected] == [
        "a: duplicate clip ID: CSV line 4 repeats CSV line 2",
        "a: duplicate clip ID: CSV line 6 repeats CSV line 2",
    ]


def test_csv_missing_unreadable_and_empty_rows_are_left_out(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path,
        [
            "a,audio/a.wav,train,1,0",
            "gone,audio/gone.wav,train,0,1",
            "x,/no/such.wav,test,1,1",
            "b,audio/b.wav,valid,0,0",
            ",audio/c.wav,train,1,1",
            "c,audio/c.wav,test,0,1",
            "d,audio,train,0,0",  # a folder, not a file
            "e,audio/a.wav,train,1,1",
        ],
    )
    manifest = csv_table(csv=csv)
    assert manifest.clip_ids == ["a", "b", "c", "e"]
    gone = (tmp_path / "audio" / "gone.wav").absolute()
    assert [(r.clip_id, r.cause) for r in manifest.rejected] == [
        ("gone", f"audio file does not exist: {gone} (CSV line 3)"),
        ("x", "audio file does not exist: /no/such.wav (CSV line 4)"),
        ("", "empty clip ID (CSV line 6)"),
        ("d", f"audio file does not exist: {(tmp_path / 'audio').absolute()} (CSV line 8)"),
    ]
    assert str(manifest.rejected[2]).startswith("<empty clip ID>: ")
    table = pd.read_csv(manifest.write_rejected(tmp_path / "r.csv"), keep_default_na=False)
    assert table.columns.tolist() == ["clip_id", "path", "cause"]
    assert table["clip_id"].tolist() == ["gone", "x", "", "d"]
    assert table["path"].iloc[1] == "/no/such.wav"
    np.testing.assert_array_equal(manifest.labels(), [[1, 0], [0, 0], [0, 1], [1, 1]])


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root reads files whatever their permissions (the R3 test in tests/reliability/ covers "
    "this case, as root without CAP_DAC_OVERRIDE)",
)
def test_csv_unreadable_audio_is_left_out(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, ["a,audio/a.wav,train,1,0", "b,audio/b.wav,test,0,1"])
    csv.write_text(csv.read_text() + "c,audio/c.wav,valid,1,1\n")
    (tmp_path / "audio" / "b.wav").chmod(0)
    manifest = csv_table(csv=csv)
    assert manifest.clip_ids == ["a", "c"]
    [rejected] = manifest.rejected
    assert rejected.cause.startswith("audio file is not readable (permission denied)")


def test_csv_more_than_half_rejected_is_an_error(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path,
        ["a,audio/a.wav,train,1,0", "gone,audio/gone.wav,train,0,1", "x,/no/such.wav,test,1,1"],
    )
    with pytest.raises(ManifestError, match="2 of 3 clips rejected") as err:
        csv_table(csv=csv)
    assert "gone: audio file does not exist" in str(err.value) and "/no/such.wav" in str(err.value)


@pytest.mark.parametrize(
    "text,problem",
    [
        ('a,audio/a.wav,train,1,0\n"b,audio/b.wav,test,0,1\n', r"line 3: malformed CSV \(a quoted"),
        (
            "a,audio/a.wav,train,1,0\nb,audio/b.wav,test,0,1,1\n",
            "line 3: 6 fields, the header has 5",
        ),
        ("a,audio/a.wav,train,1,0\nb,audio/b.wav,test\n", "line 3: 3 fields, the header has 5"),
        ('a,audio/a.wav,train,1,0\n"b\nc",audio/b.wav\n', "line 3: 2 fields.*runs on to line 4"),
        ("a,audio/a.wav,train,1,0\n\nMot\xf6rhead,audio/b.wav,test,0,1\n", "line 4: not UTF-8"),
        ("", "is empty"),
        (None, "a header but no clip rows"),
    ],
)
def test_csv_malformed_names_file_and_line(tmp_path: Path, text: str | None, problem: str) -> None:
    csv = write_csv(tmp_path, [])
    if text is not None:
        header = "clip_id,path,split,piano,voice\n" if text else ""
        csv.write_bytes((header + text).encode("latin-1"))
    with pytest.raises(ManifestError, match=problem) as err:
        csv_table(csv=csv)
    assert str(csv) in str(err.value) and "\n" not in str(err.value)


def test_csv_unknown_split(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, ["a,audio/a.wav,training,1,0"])
    with pytest.raises(ManifestError, match="training"):
        csv_table(csv=csv)


def test_csv_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nothere\.csv"):
        csv_table(csv=tmp_path / "nothere.csv")


def test_manifests_of_the_earlier_metadata_key_are_read(tmp_path: Path) -> None:
    """Manifests written before the modules moved into stage folders keep their metadata under
    ``pipeline.manifest``; they are read as they are, and a file without it is refused."""
    import pyarrow.parquet as pq

    csv = write_csv(tmp_path, ["a,audio/a.wav,train,1,0", "c,audio/c.wav,test,0,1"])
    manifest = build_manifest("csv", csv=csv, name=None)
    table = pq.read_table(manifest.write(tmp_path / "m.parquet"))
    metadata = dict(table.schema.metadata)
    metadata[b"pipeline.manifest"] = metadata.pop(b"pipeline.data.manifest")
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "old.parquet")
    old = Manifest.read(tmp_path / "old.parquet")
    assert old.name == manifest.name and old.classes == manifest.classes
    pd.testing.assert_frame_equal(old.clips, manifest.clips)

    del metadata[b"pipeline.manifest"]
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "other.parquet")
    with pytest.raises(ManifestError, match="not a manifest written by this pipeline"):
        Manifest.read(tmp_path / "other.parquet")
