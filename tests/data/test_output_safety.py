"""Issue 15, "never destroy what the tool did not create": each case reported there, tried on the real converters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from data_prep import fedicra, mednist, msd_prostate
from data_prep.common import OWNER_MARKER, UnsafeOutputError, atomic_dir, clean_leftovers, read_owner
from data_prep.synthetic.fedicra import generate as generate_fedicra
from data_prep.synthetic.mednist import generate as generate_mednist
from data_prep.synthetic.msd_prostate import generate as generate_prostate


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_convert_out_above_the_input_is_refused_and_the_input_kept(tmp_path, capsys):
    """``msd_prostate convert --out data`` with the input under ``data/raw`` deleted the input."""
    task = generate_prostate(tmp_path / "data" / "raw", n_train=3, n_test=0, n_scanners=1, scale=0.5)
    before = _tree(tmp_path / "data")
    code = msd_prostate.main(["convert", "--task-dir", str(task), "--out", str(tmp_path / "data"), "--n-sites", "1",
                              "--datalist-dir", str(tmp_path / "dl")])
    assert code == 2
    err = capsys.readouterr().err
    assert "refusing to replace" in err and str(tmp_path / "data") in err
    assert _tree(tmp_path / "data") == before and not (tmp_path / "dl").exists()


def test_an_owned_output_that_now_holds_the_input_is_still_refused(tmp_path):
    task = generate_prostate(tmp_path / "raw", n_train=3, n_test=0, n_scanners=1, scale=0.5)
    msd_prostate.convert(task, tmp_path / "out", n_sites=1, datalist_dir=tmp_path / "dl")
    moved = (tmp_path / "out" / "raw")
    task.parent.rename(moved)
    with pytest.raises(UnsafeOutputError, match="holds the input"):
        msd_prostate.convert(moved / task.name, tmp_path / "out", n_sites=1, datalist_dir=tmp_path / "dl")
    assert (moved / task.name / "dataset.json").is_file()


def test_datalist_dir_shared_with_other_data_sets_is_refused(tmp_path):
    """``fedicra convert --datalist-dir datalists`` deleted every other data set's datalists."""
    root = generate_fedicra(tmp_path / "raw", "faz", n_sites=2, n_train=3, n_test=1, size=32, layout="h5")[0]
    other = tmp_path / "datalists" / "msd_prostate" / "site-1.json"
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    with pytest.raises(UnsafeOutputError, match=rf"no {OWNER_MARKER} marker"):
        fedicra.convert(root, "faz", datalist_dir=tmp_path / "datalists")
    assert other.read_text() == "{}"
    assert fedicra.main(["convert", "--task", "faz", "--data-root", str(root),
                         "--datalist-dir", str(tmp_path / "datalists")]) == 2
    assert other.read_text() == "{}"


def test_reconverting_replaces_only_its_own_output_and_drops_stale_sites(prostate_data, tmp_path):
    out, dl = tmp_path / "data", tmp_path / "dl"
    msd_prostate.convert(prostate_data["task"], out, n_sites=3, datalist_dir=dl)
    assert sorted(p.name for p in dl.glob("*.json")) == ["site-1.json", "site-2.json", "site-3.json"]
    assert read_owner(out) == read_owner(dl) == "data_prep.msd_prostate convert"
    msd_prostate.convert(prostate_data["task"], out, n_sites=1, datalist_dir=dl)
    assert sorted(p.name for p in dl.glob("*.json")) == ["site-1.json"]  # no stale site-2/3 pointing at nothing
    assert sorted(p.name for p in out.iterdir() if p.name != OWNER_MARKER) == ["site-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "dl"]  # no temporary folder left


def test_another_tools_output_is_not_replaced(tmp_path):
    generate_mednist(tmp_path, per_class=4)
    mednist.split(tmp_path, n_sites=1, datalist_dir=tmp_path / "lists")
    with pytest.raises(UnsafeOutputError, match="'data_prep.mednist split', not by 'data_prep.msd_prostate convert'"):
        with atomic_dir(tmp_path / "lists", owner="data_prep.msd_prostate convert"):
            pass
    assert (tmp_path / "lists" / "site-1.json").is_file()


def test_non_empty_folder_without_marker_is_refused_empty_one_is_used(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UnsafeOutputError, match="remove it yourself or choose another folder"):
        with atomic_dir(tmp_path / "mine", owner="t"):
            pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty", owner="t") as tmp:
        (tmp / "a").write_text("a")
    assert read_owner(tmp_path / "empty") == "t"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafeOutputError, match="not a folder"):
        with atomic_dir(tmp_path / "file", owner="t"):
            pass


def test_generated_raw_layout_stays_pristine_but_is_owned(tmp_path):
    """Synthetic raw sets must look exactly like the release, so their marker lies beside them."""
    generate_mednist(tmp_path, per_class=2)
    assert OWNER_MARKER not in os.listdir(tmp_path / "MedNIST")
    assert read_owner(tmp_path / "MedNIST") == "data_prep.mednist generate"
    generate_mednist(tmp_path, per_class=3)  # its own output: replaced
    assert len(list((tmp_path / "MedNIST" / "Hand").iterdir())) == 3


def test_generated_folder_deleted_and_recreated_is_no_longer_owned(tmp_path):
    generate_mednist(tmp_path, per_class=2)
    for path in sorted((tmp_path / "MedNIST").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "MedNIST").rmdir()
    (tmp_path / "MedNIST" / "Hand").mkdir(parents=True)  # e.g. the real data copied to the same place
    (tmp_path / "MedNIST" / "Hand" / "000000.jpeg").write_bytes(b"real")
    assert read_owner(tmp_path / "MedNIST") is None
    with pytest.raises(UnsafeOutputError):
        generate_mednist(tmp_path, per_class=2)
    assert (tmp_path / "MedNIST" / "Hand" / "000000.jpeg").read_bytes() == b"real"


def test_leftovers_of_a_killed_run_are_cleaned_on_the_next_run(tmp_path):
    dead = _dead_pid()
    stale = [tmp_path / f".out.tmp-{dead}-x1y2", tmp_path / f".out.old-{dead}", tmp_path / ".out.tmp-legacy"]
    alive = tmp_path / f".out.tmp-{os.getpid()}-busy"  # a concurrent run of this process: kept
    other = tmp_path / f".other.tmp-{dead}-x"  # another target's: not ours to clean
    for path in (*stale, alive, other):
        path.mkdir()
        (path / "half.nii.gz").write_bytes(b"")
    with atomic_dir(tmp_path / "out", owner="t") as tmp:
        (tmp / "a").write_text("a")
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other.exists()
    assert clean_leftovers(tmp_path / "out") == []


def test_converter_cleans_a_killed_conversion(prostate_data, tmp_path):
    dead = _dead_pid()
    half = tmp_path / f".data.tmp-{dead}-abcd"
    (half / "site-1").mkdir(parents=True)
    old_lists = tmp_path / f".dl.old-{dead}"
    old_lists.mkdir()
    msd_prostate.convert(prostate_data["task"], tmp_path / "data", n_sites=1, datalist_dir=tmp_path / "dl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "dl"]
    marker = json.loads((tmp_path / "dl" / OWNER_MARKER).read_text())
    assert marker == {"tool": "data_prep.msd_prostate convert"}
