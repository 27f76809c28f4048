import json

import pytest

from data_prep.common import (
    DataValidationError,
    atomic_dir,
    atomic_write_json,
    check_inside_root,
    split_by_fractions,
    write_site_datalist,
)


def test_split_is_deterministic_disjoint_and_complete():
    ids = [f"case{i:02d}" for i in range(12)]
    a = split_by_fractions(ids, (0.6, 0.17, 0.23), seed=3)
    b = split_by_fractions(list(reversed(ids)), (0.6, 0.17, 0.23), seed=3)
    assert a == b  # input order does not matter, the seed does
    assert [len(p) for p in a] == [7, 2, 3]  # largest-remainder rounding: 7.2, 2.04, 2.76
    assert sorted(sum(a, [])) == ids
    assert split_by_fractions(ids, (0.6, 0.17, 0.23), seed=4) != a


def test_split_keeps_one_case_in_every_positive_split():
    assert [len(p) for p in split_by_fractions(["a", "b", "c"], (0.8, 0.1, 0.1), seed=0)] == [1, 1, 1]
    with pytest.raises(DataValidationError, match="at least 3 cases"):
        split_by_fractions(["a", "b"], (0.8, 0.1, 0.1), seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_fractions(["a", "b"], (0.5, 0.4), seed=0)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_json(tmp_path):
    path = atomic_write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.nii.gz", "a/../../outside.nii.gz"])
def test_paths_must_stay_inside_the_data_root(tmp_path, bad):
    with pytest.raises(DataValidationError, match="data root"):
        check_inside_root(bad, tmp_path, "training[0].image")


def test_write_site_datalist_checks_files_and_empty_site(tmp_path):
    (tmp_path / "img.nii.gz").write_bytes(b"")
    ok = {"training": [{"image": "img.nii.gz", "label": 1}]}
    write_site_datalist(tmp_path / "dl" / "site-1.json", tmp_path, ok)
    with pytest.raises(DataValidationError, match="does not exist"):
        write_site_datalist(tmp_path / "dl" / "site-2.json", tmp_path, {"training": [{"image": "missing.nii.gz"}]})
    with pytest.raises(DataValidationError, match="no training cases"):
        write_site_datalist(tmp_path / "dl" / "site-3.json", tmp_path, {"training": [], "validation": []})
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["site-1.json"]
