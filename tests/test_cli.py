import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import main
from pipeline.data.manifest import Manifest


def test_every_stage_has_help(capsys):
    for stage in ("data", "extract"):
        with pytest.raises(SystemExit) as exit_info:
            main([stage, "--help"])
        assert exit_info.value.code == 0
        assert "usage: pipeline" in capsys.readouterr().out


def test_data_from_own_csv(tmp_path, capsys):
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(800), 8000)
    table = tmp_path / "clips.csv"
    table.write_text("clip_id,path,split,piano,drums\na,a.wav,train,1,\nb,b.wav,test,0,1\n")
    assert main(["--data-dir", str(tmp_path / "data"), "data", "mine", "--csv", str(table)]) == 0
    manifest = Manifest.read(tmp_path / "data" / "manifests" / "mine.parquet")
    assert manifest.classes == ("piano", "drums") and manifest.clip_ids == ["a", "b"]
    assert "2 clips (test 1, train 1), 2 classes, 75% of labels known" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    table = tmp_path / "clips.csv"
    table.write_text("clip_id,path,split,piano\na,missing.wav,train,1\n")
    assert main(["--data-dir", str(tmp_path), "data", "mine", "--csv", str(table)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mine: 1 of 1 clips rejected") and "missing.wav" in err
    assert err.count("\n") == 1
    assert main(["--data-dir", str(tmp_path), "data", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'nope'")
    with pytest.raises(SystemExit):
        main(["data", "../escape", "--csv", str(table)])
    assert "use letters, digits" in capsys.readouterr().err


def test_extract_without_manifest_says_what_to_run(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "extract", "nodata", "musicnn"]) == 2
    assert "build it first with `make data DATASET=nodata`" in capsys.readouterr().err


def test_teacher_names_and_hear_modules(tmp_path, capsys):
    from pipeline.paths import store_path
    from pipeline.stamps import stamps_for, train_key
    from pipeline.teachers import check_teacher_name, list_teachers

    assert {"aisfx", "musicnn", "openl3", "panns", "passt", "vggish", "hear:<module>"} == set(
        list_teachers()
    )
    assert check_teacher_name("hear:my_pkg.hear_api") == "hear:my_pkg.hear_api"
    for bad in ("hear:", "hear:../x", "hear:a/b", "nope"):
        with pytest.raises(ValueError, match="unknown teacher"):
            check_teacher_name(bad)
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "extract", "demo", "hear:../x"])
    assert "unknown teacher 'hear:../x'" in capsys.readouterr().err

    assert store_path(tmp_path, "demo", "hear:pkg.api") == tmp_path / "cache/demo/hear-pkg.api.zarr"
    with pytest.raises(ValueError, match="cannot name a store"):
        store_path(tmp_path, "demo", "../up")

    env = {"DATASET": "demo", "TEACHER": "hear:pkg.api+musicnn"}
    stamps = stamps_for(env)
    assert {"extract-demo-hear-pkg.api", "extract-demo-musicnn"} <= set(stamps)
    assert train_key(env) == "demo-preset-hear-pkg.api+musicnn"
    other_module = stamps_for({**env, "TEACHER": "hear:pkg.other"})["extract-demo-hear-pkg.other"]
    assert other_module == stamps["extract-demo-hear-pkg.api"]  # same code; the key differs
