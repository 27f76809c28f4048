"""benchmarks.report: reads every comparison's CSV, tables with mean +/- std and n, orderings decided by the test."""

import pytest

from benchmarks.report import BEGIN, END, build_report, main, update_readme
from benchmarks.stats import Claim, write_comparison


def _comparison(root, name, algorithm, gap):
    rows = []
    for seed in (0, 1, 2):
        for site in ("A", "B"):
            for i in range(4):
                base = 0.5 + 0.05 * i
                for method, value in (("global", base), ("personal", base + gap + (0.02 if (i + seed) % 2 else -0.02))):
                    rows.append({"algorithm": algorithm, "setting": "inside", "site": site, "method": method,
                                 "seed": seed, "metric": "dice", "case": f"Case{i:02d}", "value": value})
    meta = {"algorithm": algorithm, "title": f"{algorithm} demo", "synthetic": True,
            "settings": {"seeds": [0, 1, 2], "num_rounds": 5, "wall_seconds": 1.0}}
    claims = [Claim("inside", "personal", "global", "dice"), Claim("inside", "global", "personal", "dice"),
              Claim("inside", "routing", "global", "dice")]
    write_comparison(root / name, name, rows, meta, claims)


def test_report_across_algorithms(tmp_path):
    _comparison(tmp_path, "alg_a", "alpha", gap=0.1)
    _comparison(tmp_path, "alg_b", "beta", gap=0.0)
    out, block = build_report(tmp_path)
    text = out.read_text()
    assert "## alpha: alpha demo" in text and "## beta: beta demo" in text
    # cells: mean ± std over 3 seeds, n = 3 seeds × 4 volumes; site A global mean of 0.50..0.65 = 0.575
    assert "| global | 0.575 ± 0.000 (3×4) |" in text
    assert "**synthetic data**" in text
    lines = [line for line in text.splitlines() if line.startswith("| inside: personal > global")]
    assert len(lines) == 2 and "**yes**" in lines[0]  # alpha: a gap of 0.08-0.12 on every volume
    # beta: +-0.02 per volume and seed; averaged over seeds -0.0067 on even cases, +0.0067 on odd ones
    assert "**within noise**" in lines[1]
    assert any("inside: global > personal" in line and "**no**" in line for line in text.splitlines())
    assert "not measured" in text  # a claimed method that did not run is said so, not dropped
    assert (tmp_path / "report_alg_a_alg_a.png").stat().st_size > 0
    assert "alpha" in block and "beta" in block


def test_readme_block_is_rewritten_in_place(tmp_path):
    _comparison(tmp_path / "results", "alg_a", "alpha", gap=0.1)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n")
    assert main(["--results", str(tmp_path / "results"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{END}\nafter\n") and "old" not in text
    assert "alpha" in text
    assert not update_readme(tmp_path / "results" / "report.md", "x")  # no markers: nothing rewritten


def test_no_comparison_is_an_error(tmp_path, capsys):
    assert main(["--results", str(tmp_path)]) == 2
    assert "no comparison" in capsys.readouterr().err


if __name__ == "__main__":
    pytest.main([__file__])


def test_report_copes_with_any_subset_and_a_broken_comparison(tmp_path, capsys):
    """Comparisons present in any combination; one without its volumes file is named as skipped, not fatal; a
    comparison without a ``dice`` metric plots its primary metric; hd95_* and nmse read lower-is-better."""
    from benchmarks.report import lower_is_better, primary_metric

    _comparison(tmp_path, "alg_a", "alpha", gap=0.1)
    rows = [{"algorithm": "recon", "setting": "federation", "site": s, "method": m, "seed": seed, "metric": metric,
             "case": f"v{i}", "value": v + (0.01 * i if m == "ours" else 0.0)}
            for s in ("site-1", "site-2") for m in ("ours", "base") for seed in (0, 1) for i in range(3)
            for metric, v in (("psnr", 20.0), ("nmse", 0.1))]
    meta = {"algorithm": "recon", "title": "no dice", "synthetic": True, "run_label": "reduced run on synthetic data",
            "primary_metric": "psnr", "settings": {"seeds": [0, 1], "num_rounds": 3, "wall_seconds": 2.0}}
    write_comparison(tmp_path / "recon", "recon", rows, meta,
                     [Claim("federation", "ours", "base", "psnr"),
                      Claim("federation", "ours", "base", "nmse", higher_is_better=False, sites=("site-2",))])
    _comparison(tmp_path, "broken", "gamma", gap=0.1)
    (tmp_path / "broken" / "broken_volumes.csv").unlink()
    out, block = build_report(tmp_path)
    text = out.read_text()
    assert "## alpha: alpha demo" in text and "## recon: no dice" in text and "gamma" not in block
    assert "Skipped (unreadable): `broken/broken.csv`" in text and "skipping comparison" in capsys.readouterr().err
    assert "reduced run on synthetic data" in text and "reduced run on synthetic data" in block
    assert "### federation: nmse (nmse, lower is better)" in text
    # ours = base + 0.01 * i on psnr: volumes 1, 2 gain, volume 0 ties -> bootstrap interval [0, +0.02]: noise
    line = next(ln for ln in text.splitlines() if ln.startswith("| federation: ours > base"))
    assert "| 6 |" in line  # 2 sites x 3 volumes
    line = next(ln for ln in text.splitlines() if ln.startswith("| federation [site-2]: ours < base"))
    assert "| 3 |" in line  # the claim's site subset only
    assert (tmp_path / "report_recon_recon.png").stat().st_size > 0
    assert lower_is_better("hd95_disc") and lower_is_better("nmse") and not lower_is_better("dice_cup")
    assert primary_metric({"name": "x", "rows": [{"metric": "ssim"}], "meta": {}}) == "ssim"
    (tmp_path / "alg_a" / "alg_a_volumes.csv").unlink()
    (tmp_path / "recon" / "recon_volumes.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no readable comparison"):
        build_report(tmp_path)


def test_claim_sites_round_trip_through_the_meta(tmp_path):
    from benchmarks.report import load_comparison

    _comparison(tmp_path, "alg_a", "alpha", gap=0.1)
    meta = {"algorithm": "alpha", "title": "t", "synthetic": True, "settings": {}}
    rows = [{"algorithm": "alpha", "setting": "inside", "site": "A", "method": "m", "seed": 0, "metric": "dice",
             "case": "c", "value": 0.5}]
    write_comparison(tmp_path / "s", "s", rows, meta, [Claim("inside", "m", "n", "dice", sites=("A", "B"))])
    claim = load_comparison(tmp_path / "s" / "s.csv")["claims"][0]
    assert claim.sites == ("A", "B") and claim == Claim("inside", "m", "n", "dice", sites=("A", "B"))


def test_fewer_than_six_volumes_never_decide(tmp_path):
    rows = [{"algorithm": "a", "setting": "s", "site": "A", "method": m, "seed": 0, "metric": "dice", "case": f"c{i}",
             "value": v + 0.01 * i} for i in range(2) for m, v in (("ours", 0.8), ("base", 0.5))]
    meta = {"algorithm": "a", "title": "t", "synthetic": True, "settings": {}}
    write_comparison(tmp_path / "few", "few", rows, meta, [Claim("s", "ours", "base", "dice")])
    line = next(ln for ln in build_report(tmp_path)[0].read_text().splitlines() if ln.startswith("| s: ours > base"))
    # both volumes agree and the interval is clear of 0, but a 2-of-2 sign test has p = 0.5
    assert "| 2 / 0 / 0 | 0.5 | 2 | **within noise** |" in line
