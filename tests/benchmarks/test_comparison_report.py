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
