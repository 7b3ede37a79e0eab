"""The training budget (distill/budget.py): the published AdaSPEC rule (same optimiser steps as the
reference, batch / k), the equal-batch reading, explicit numbers, and the global batch split over
ranks; plus the pipeline dry run that prints it for the GSM8K Pythia recipe."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from adaspec_dist.distill.budget import resolve_budget, split_over_ranks

GSM8K_TRAIN = 7473
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _budget(**kw):
    args = dict(passes=1.0, kept_token_epochs=None, budget="paper", fraction=0.4, global_batch_size=None,
                micro_batch_size=2, grad_accum=1, dp_size=8)
    args.update(kw)
    return resolve_budget(**args)


@pytest.mark.parametrize("dp_size", [1, 2, 8])
def test_paper_rule_gives_the_official_gsm8k_steps(dp_size):
    """Official scripts on 8 GPUs: reference 3 epochs at 2/device (16), AdaSPEC 7.5 epochs at
    5/device (40): both ~1,401 steps. The rule gives that on any world size."""
    ref = _budget(passes=3, global_batch_size=16, dp_size=dp_size)
    ada = _budget(kept_token_epochs=3, global_batch_size=16, dp_size=dp_size)
    assert (ref.global_batch, ada.global_batch) == (16, 40)
    assert ada.passes == pytest.approx(7.5)
    assert ref.micro_batch * ref.grad_accum * dp_size == 16 and ada.micro_batch * ada.grad_accum * dp_size == 40
    assert ref.micro_batch <= 2 and ada.micro_batch <= 5
    s_ref, s_ada = ref.steps(GSM8K_TRAIN, dp_size), ada.steps(GSM8K_TRAIN, dp_size)
    assert abs(s_ref - 1401) <= 4 and abs(s_ada - 1401) <= 4, (s_ref, s_ada)
    if dp_size == 8:  # the official per-device numbers
        assert (ref.micro_batch, ref.grad_accum, ada.micro_batch, ada.grad_accum) == (2, 1, 5, 1)


def test_paper_rule_without_a_global_batch_scales_the_micro_batch():
    ada = _budget(kept_token_epochs=2.4, micro_batch_size=16, dp_size=1)
    assert (ada.global_batch, ada.micro_batch, ada.grad_accum, ada.passes) == (40, 40, 1, pytest.approx(6.0))
    ref = _budget(passes=2.4, micro_batch_size=16, dp_size=1)
    assert ada.steps(2000, 1) == ref.steps(2000, 1) == 300


def test_paper_rule_rounds_up_to_what_the_ranks_share_and_keeps_the_steps():
    ref = _budget(passes=3, global_batch_size=8, micro_batch_size=1, dp_size=8)  # MBPP: batch 8
    ada = _budget(kept_token_epochs=3, global_batch_size=8, micro_batch_size=1, dp_size=8)
    assert ada.global_batch == 24 and ada.micro_batch * ada.grad_accum * 8 == 24
    assert ada.steps(374, 8) == pytest.approx(ref.steps(374, 8), rel=0.03)  # ceil of 374 / 24 per pass
    assert _budget(kept_token_epochs=3, global_batch_size=8, micro_batch_size=1, dp_size=4).global_batch == 20


def test_equal_batch_and_explicit():
    eq = _budget(kept_token_epochs=3, budget="equal_batch", global_batch_size=16)
    assert (eq.global_batch, eq.passes) == (16, pytest.approx(7.5))
    assert eq.steps(GSM8K_TRAIN, 8) == pytest.approx(2.5 * _budget(passes=3, global_batch_size=16).steps(GSM8K_TRAIN, 8),
                                                    rel=0.01)
    explicit = _budget(passes=2, micro_batch_size=3, grad_accum=4, dp_size=2)
    assert (explicit.global_batch, explicit.micro_batch, explicit.grad_accum, explicit.passes) == (24, 3, 4, 2.0)


def test_split_over_ranks_and_errors():
    assert split_over_ranks(16, 2, 1) == (2, 8)
    assert split_over_ranks(40, 2, 8) == (1, 5)  # 5 per rank, micro-batch bound 2: 5 = 1 x 5
    assert split_over_ranks(12, 8, 2) == (6, 1)
    with pytest.raises(ValueError, match="global_batch_size=16 cannot be shared by 3 ranks"):
        split_over_ranks(16, 2, 3)
    with pytest.raises(ValueError, match="budget 'half' must be one of"):
        _budget(kept_token_epochs=3, budget="half")
    with pytest.raises(ValueError, match="global_batch_size must be a positive"):
        _budget(global_batch_size=0)


def test_dry_run_prints_the_published_budget(capsys):
    from adaspec_dist.cli import pipeline

    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    assert pipeline.run(parser.parse_args([str(CONFIGS / "gsm8k-pythia31m-1.4b.yaml"), "--dry-run"])) == 0
    lines = capsys.readouterr().out.splitlines()

    def budget_of(stage):
        i = next(i for i, line in enumerate(lines) if line.split()[1:2] == [stage])
        words = lines[i + 1].split()
        return int(words[0]), int(words[3])  # "N steps x B sequences/step ..."

    (s_ref, b_ref), (s_ada, b_ada), (s_wide, b_wide) = map(budget_of, ("reference", "adaspec", "distillspec_wide"))
    assert (b_ref, b_ada, b_wide) == (16, 40, 40)
    assert abs(s_ref - 1401) <= 4 and s_ada == s_wide and abs(s_ada - 1401) <= 4
