"""`adaspec-dist report` over run directories laid out as the pipeline writes them
(pipeline.yaml + eval/eval.json in the eval command's schema): per-run rows, mean ± std per
recipe over seeds, the win count, the PNG, and one-line errors for a directory that is not a run."""
from __future__ import annotations

import json
import statistics

import pytest
import yaml

from adaspec_dist.report import aggregate, load_run, write_report
from tests.helpers import run_cli


def _eval_entry(alpha: float, accept: float, tau: float, speedup: float) -> dict:
    row = {"acceptance_rate": accept, "tau": tau, "speedup": speedup, "per_position": [accept]}
    return {"alpha_logits": alpha, "alpha_positions": 100, "by_gamma": {"2": dict(row), "4": dict(row)}}


def _make_run(root, name, task, seed, ds_alpha, ada_alpha, wide_alpha=None):
    d = root / f"{name}-seed{seed}"
    (d / "eval").mkdir(parents=True)
    (d / "pipeline.yaml").write_text(yaml.safe_dump({"name": name, "task": task, "seed": seed, "run_dir": str(d)}))
    result = {"settings": {}, "target": {"tokens_per_s": 10.0},
              "drafts": {"distillspec": _eval_entry(ds_alpha, ds_alpha - 0.1, 2.0 + ds_alpha, 1.1),
                         "adaspec": _eval_entry(ada_alpha, ada_alpha - 0.1, 2.0 + ada_alpha, 1.2)}}
    if wide_alpha is not None:
        result["drafts"]["distillspec_wide"] = _eval_entry(wide_alpha, wide_alpha - 0.1, 2.0 + wide_alpha, 1.0)
    (d / "eval" / "eval.json").write_text(json.dumps(result))
    return d


def test_report_mean_std_wins_and_files(tmp_path):
    ds, ada, wide = [0.70, 0.72, 0.71], [0.74, 0.73, 0.70], [0.75, 0.72, 0.69]
    dirs = [_make_run(tmp_path, "gsm8k-p", "gsm8k", s, d, a, w) for s, (d, a, w) in enumerate(zip(ds, ada, wide))]
    dirs.append(_make_run(tmp_path, "xsum-p", "xsum", 0, 0.5, 0.6))
    agg = {g["name"]: g for g in aggregate([load_run(d) for d in dirs])}
    g = agg["gsm8k-p"]
    assert g["stats"]["adaspec"]["alpha_logits"] == pytest.approx((statistics.fmean(ada), statistics.stdev(ada)))
    assert g["stats"]["distillspec"]["tau"][0] == pytest.approx(2.0 + statistics.fmean(ds))
    assert g["adaspec_wins"] == 2 and g["seeds"] == [0, 1, 2]
    # The compute control: AdaSPEC above it on seeds 1 and 2 (0.73 > 0.72, 0.70 > 0.69).
    assert g["adaspec_wins_wide"] == 2
    assert g["alpha_gain_wide"][0] == pytest.approx(statistics.fmean(a - w for a, w in zip(ada, wide)))
    assert agg["xsum-p"]["stats"]["adaspec"]["alpha_logits"] == (0.6, None)  # one seed: no std
    assert "distillspec_wide" not in agg["xsum-p"]["stats"]  # a two-arm run is reported with two arms

    proc = run_cli(["report", *map(str, dirs), "--out", str(tmp_path / "rep"), "--gamma", "2"], timeout=120)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md in proc.stdout
    assert "| gsm8k-p | 0,1,2 |" in md and "2/3" in md
    assert "above the compute control on 2/3 seeds" in md
    assert "no compute control in these runs" in md  # xsum-p
    assert "| xsum-p | 0 | 0.5000 | 0.6000 | – |" in md  # a single seed shows no "± 0.0000"
    assert (tmp_path / "rep" / "report_alpha.png").stat().st_size > 1000
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["aggregate"][0]["name"] == "gsm8k-p"


def test_report_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="pipeline.yaml is missing"):
        write_report([tmp_path], tmp_path / "out")
    d = _make_run(tmp_path, "a", "arith", 0, 0.5, 0.6)
    with pytest.raises(ValueError, match="gamma 3 was not evaluated"):
        load_run(d, gamma=3)
    proc = run_cli(["report", str(tmp_path / "nope")], check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is missing" in proc.stderr
