"""Measured numbers in README.md and docs/ are written from benchmarks/results/ and stay so."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import results_docs as rd  # noqa: E402
from results_io import provenance, source_digest, stale_files  # noqa: E402


def test_readme_and_docs_match_the_results_files():
    problems = [line for doc in rd.documents() for line in rd.stale_values(doc)]
    assert not problems, "\n".join(problems)


def test_no_results_file_was_measured_on_other_code():
    problems = rd.stale_results()
    assert not problems, "\n".join(problems)


# Benchmark-table rows not yet converted: their rows are being rewritten (issue 25's selection rows).
NOT_YET_MARKED = {"selection_real"}
# Numbers in the measured column that are settings, not measurements.
SETTINGS_IN_MEASURED = {"0.95"}  # cache_kl_error: "where top-64 mass ≥ 0.95"

# Pages that quote results, and how many value markers each holds at least.
DOC_MARKERS = {"cache-compact.md": 190, "cache-format.md": 15, "generated-data.md": 45, "demo-research.md": 9,
               "tensor-parallel.md": 7}


def test_the_docs_quote_results_through_markers():
    # The tables this issue is about: the demo's seeds and the benchmark table.
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!--= reproduce_demo.") >= 18
    assert readme.count("<!--sources-->") >= 4 and readme.count("<!--= ") >= 200
    # Every row of the benchmark table whose script writes a results file renders its measured column
    # from that file: a marker reading it, and no decimal number outside the markers.
    table = readme.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| claim", "| ---"))]
    assert len(rows) >= 20
    checked = 0
    for cells in rows:
        scripts = [s for s in re.findall(r"`(\w+)\.(?:py|sh)`", cells[1]) if (rd.RESULTS / f"{s}.json").is_file()]
        if not scripts or set(scripts) & NOT_YET_MARKED:
            continue
        measured = " | ".join(cells[2:])
        exprs = [m.group("expr") for m in rd.VALUE.finditer(measured)]
        for s in scripts:
            assert any(re.search(rf"\b{s}\b", e) for e in exprs), f"no marker reads {s}.json in its row: {measured[:200]}"
        bare = set(re.findall(r"\d+\.\d+", rd.VALUE.sub("", measured))) - SETTINGS_IN_MEASURED
        assert not bare, f"{scripts}: measured numbers outside a marker: {sorted(bare)}"
        checked += 1
    assert checked >= 20
    # The pages of docs/ that quote results do it through markers, with the sources under them.
    for name, least in DOC_MARKERS.items():
        text = (ROOT / "docs" / name).read_text()
        assert text.count("<!--= ") >= least and "<!--sources-->" in text, name


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    (d / "sub").mkdir(parents=True)
    (d / "demo.json").write_text(json.dumps({"alpha": [0.78961, 0.7, 0.8], "name": "x", "nested": {"k-1": 2},
                                             "machine": {"date": "2026-12-05T10:00:00+00:00", "cpu_count": 2,
                                                         "torch": "2.13.0", "load_avg_1m": 0.5}}))
    (d / "sub" / "report.json").write_text(json.dumps({"n": 3}))
    return d


def test_render_formats_values_and_lists_sources(results):
    text = ("a <!--= demo.alpha[0] ; .4f -->?<!--/=--> b <!--= pm(demo.alpha, '.2f') -->?<!--/=--> "
            "<!--= demo.nested['k-1'] -->?<!--/=--> <!--= R('sub/report').n * 2 -->?<!--/=-->\n"
            "<!--sources-->old<!--/sources-->\n")
    out, used, differs = rd.render(text, "X.md", results)
    assert "a <!--= demo.alpha[0] ; .4f -->0.7896<!--/=-->" in out
    assert "-->0.76 ± 0.05<!--/=-->" in out
    assert "-->2<!--/=-->" in out and "-->6<!--/=-->" in out
    assert "`demo.json` (2026-12-05, 2 CPU cores, torch 2.13.0, load 0.5)" in out
    assert used == ["demo", "sub/report"]
    assert len(differs) == 5  # every marker above held placeholder text
    assert rd.render(out, "X.md", results)[0] == out and rd.render(out, "X.md", results)[2] == []  # a fixed point


def test_a_value_edited_by_hand_is_caught(results, tmp_path, monkeypatch):
    doc = tmp_path / "X.md"
    good = rd.render("α <!--= demo.alpha[0] ; .4f -->?<!--/=-->\n<!--sources--><!--/sources-->\n", "X.md", results)[0]
    doc.write_text(good)
    assert rd.stale_values(doc, results) == []
    doc.write_text(good.replace("0.7896", "0.7763"))
    [line] = rd.stale_values(doc, results)
    assert "X.md:1" in line and "'0.7763' should be '0.7896'" in line


def test_block_marker_is_written_by_the_benchmarks_function(results, tmp_path, monkeypatch):
    (tmp_path / "fake_bench.py").write_text("def table(xs):\n    return '| a |\\n| --- |\\n' + "
                                            "'\\n'.join(f'| {x:.2f} |' for x in xs)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = "before\n<!--block= call('fake_bench', 'table', demo.alpha) -->\nstale\n<!--/block-->\nafter\n"
    out, used, differs = rd.render(text, "X.md", results)
    assert "\n| a |\n| --- |\n| 0.79 |\n| 0.70 |\n| 0.80 |\n<!--/block-->\nafter" in out
    assert used == ["demo"] and len(differs) == 1 and "X.md:2: the block differs" in differs[0]
    assert rd.render(out, "X.md", results)[2] == []


def test_a_bad_marker_is_one_line_naming_the_place(results):
    with pytest.raises(rd.DocError, match=r"X.md:2: .*no results file .*missing.json"):
        rd.render("ok\n<!--= missing.alpha -->?<!--/=-->\n", "X.md", results)
    with pytest.raises(rd.DocError, match=r"X.md:1: .*no key 'alhpa'"):
        rd.render("<!--= demo.alhpa -->?<!--/=-->", "X.md", results)
    with pytest.raises(rd.DocError, match="no value marker above it"):
        rd.render("<!--sources--><!--/sources-->", "X.md", results)


def test_check_command_fails_on_a_hand_edit(tmp_path):
    # The command the Makefile runs, on a copy of the repository's docs with one number changed.
    copy = tmp_path / "repo"
    for rel in ("README.md", "docs", "benchmarks", "tools/results_docs.py"):
        src, dst = ROOT / rel, copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    (copy / "adaspec_dist").symlink_to(ROOT / "adaspec_dist")
    (copy / "configs").symlink_to(ROOT / "configs")
    cmd = [sys.executable, str(copy / "tools/results_docs.py"), "--check"]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    readme = copy / "README.md"
    text = readme.read_text()
    m = rd.VALUE.search(text)
    readme.write_text(text[:m.start("text")] + "9.9999" + text[m.end("text"):])
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1 and "README.md:" in bad.stderr and "'9.9999' should be" in bad.stderr
    fixed = subprocess.run(cmd[:-1], capture_output=True, text=True)
    assert fixed.returncode == 0 and "rewrote README.md" in fixed.stdout
    assert readme.read_text() == text


def test_digest_ignores_comments_and_docstrings_but_not_code(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""Doc."""\ndef f(x):\n    """Say."""\n    return x + 1  # one\n')
    base = source_digest(f)
    f.write_text('"""Another doc."""\n\ndef f(x):\n    """Says more."""\n    # why\n    return x + 1\n')
    assert source_digest(f) == base
    f.write_text('"""Doc."""\ndef f(x):\n    """Say."""\n    return x + 2\n')
    assert source_digest(f) != base


def test_a_result_measured_on_other_code_says_so(results, tmp_path):
    prov = provenance("configs/demo.yaml")
    data = json.loads((results / "demo.json").read_text())
    (results / "demo.json").write_text(json.dumps({**data, "provenance": prov}))
    assert "measured before" not in rd.describe("demo", results)
    prov["digests"]["configs/demo.yaml"] = "0" * 64  # as if the recipe had changed after the run
    (results / "demo.json").write_text(json.dumps({**data, "provenance": prov}))
    assert "**measured before changes to configs/demo.yaml**" in rd.describe("demo", results)
    [line] = rd.stale_results(results, only={"demo": "benchmarks/demo.sh"})
    assert "configs/demo.yaml changed since" in line and "run benchmarks/demo.sh" in line
    assert rd.stale_results(results, only={"sub/report": "x.sh"}) == \
        ["benchmarks/results/sub/report.json records no provenance: run x.sh"]


def test_provenance_names_the_changed_file(tmp_path):
    prov = provenance("configs/demo.yaml")
    assert prov["digests"]["configs/demo.yaml"] == source_digest(ROOT / "configs/demo.yaml")
    assert any(k.startswith("adaspec_dist/") for k in prov["digests"]) or "adaspec_dist" not in sys.modules
    assert stale_files(prov) == []
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/demo.yaml").write_text("changed: 1\n")
    only = {"digests": {"configs/demo.yaml": prov["digests"]["configs/demo.yaml"]}}
    assert stale_files(only, tmp_path) == ["configs/demo.yaml"]
    assert stale_files({"digests": {"gone.py": "0"}}, tmp_path) == ["gone.py"]
