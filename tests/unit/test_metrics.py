"""metrics.py: α_logits (teacher-forced), τ theory, summaries of decoding statistics."""
import math

import pytest
import torch

from adaspec_dist.models.load import build_preset
from adaspec_dist.speculative.decoder import DecodeStats
from adaspec_dist.speculative.metrics import alpha_logits, speedup_bound, summarize, theoretical_tau
from adaspec_dist.speculative.sampling import SamplingConfig

SEQS = [([1, 5, 9, 3, 7, 2], [-100, -100, -100, 3, 7, 2]),
        ([4, 4, 8], [-100, 4, 8]),
        ([6, 1, 2, 3, 4, 5, 6, 7, 8], [-100] * 4 + [4, 5, 6, 7, 8])]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_alpha_of_a_model_against_itself_is_one(temperature):
    model = build_preset("tiny-neox", 32, seed=0, initializer_range=0.2)
    a = alpha_logits(model, model, SEQS, sampling=SamplingConfig(temperature=temperature), batch_size=2)
    assert a["positions"] == 3 + 2 + 5          # labels[t+1] != -100
    assert a["alpha"] == pytest.approx(1.0, abs=1e-5)


def test_alpha_matches_a_direct_computation():
    target = build_preset("tiny-llama", 32, seed=0, initializer_range=0.2)
    draft = build_preset("tiny-llama", 32, seed=1, initializer_range=0.2)
    got = alpha_logits(target, draft, SEQS, sampling=SamplingConfig(temperature=1.0), batch_size=2)["alpha"]
    vals = []
    with torch.no_grad():
        for ids, labels in SEQS:   # one unpadded sequence at a time, plain HF forward
            p = torch.softmax(target(torch.tensor([ids])).logits[0], -1)
            q = torch.softmax(draft(torch.tensor([ids])).logits[0], -1)
            for t in range(len(ids) - 1):
                if labels[t + 1] != -100:
                    vals.append(torch.minimum(p[t], q[t]).sum().item())
    assert got == pytest.approx(sum(vals) / len(vals), abs=1e-5)
    assert 0.0 < got < 1.0


def test_theoretical_tau_and_bound():
    assert theoretical_tau(0.0, 4) == 1.0
    assert theoretical_tau(1.0, 4) == 5.0
    assert theoretical_tau(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert speedup_bound(3.0, 4, 0.05) == pytest.approx(3.0 / 1.2)


def test_summarize_counts_the_bonus_token_and_positions():
    # 10 steps with gamma 3: 4 rejected the first draft, 3 accepted 1, 1 accepted 2, 2 accepted all
    s = summarize(DecodeStats(gamma=3, accept_hist=[4, 3, 1, 2], generated=0))
    assert s["accepted"] == 3 + 2 + 6
    assert s["acceptance_rate"] == pytest.approx(11 / 30)
    assert s["tau"] == pytest.approx((11 + 10) / 10)
    assert s["per_position"] == pytest.approx([6 / 10, 3 / 6, 2 / 3])
    s = summarize(DecodeStats(gamma=2, accept_hist=[5, 0, 0]))
    assert s["per_position"][0] == 0 and math.isnan(s["per_position"][1])
    with pytest.raises(ValueError):
        summarize(DecodeStats(gamma=2, accept_hist=[0, 0, 0]))
