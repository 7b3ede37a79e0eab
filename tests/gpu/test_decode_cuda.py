"""Speculative decoding on the device: SDPA attention with hole masks, KV slots, device-side
sampling and verification (CUDA generators). Greedy SD equals the target's greedy output in fp32
and bf16 for tiny GPTNeoX / Llama pairs with ragged prompts (tie-aware in bf16: see checks.py), and
sampled SD draws the target's distribution (chi-square, with a broken verifier as the control it
must fail). The CPU versions are tests/unit/test_decoder_models.py."""
import pytest
import torch

from adaspec_dist.models.load import build_preset
from adaspec_dist.speculative.decoder import autoregressive_generate, speculative_generate
from adaspec_dist.speculative.sampling import SamplingConfig
from adaspec_dist.speculative.verify import verify
from tests.gpu.checks import greedy_divergences, greedy_violations, noisy_copy
from tests.helpers import first_two_chisquare

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# A token counts as the target's greedy choice when its logit is within this fraction of the largest
# |logit| of the maximum (bf16 keeps 8 mantissa bits: ~0.4 % per rounding, and SD's (gamma+1)-token
# verification and the 1-token step round differently; a wrong mask or KV slot moves logits by O(1)).
TIE = {"fp32": 1e-4, "bf16": 3e-2}
PROMPTS = [[5, 17, 33, 2, 9, 41, 60], [7], [12, 13, 14], [88] * 11, [30, 31], [3, 1, 4, 1, 5, 9, 2, 6]]


def _hf_greedy(model, prompt, n, device):
    ids = torch.tensor([prompt], device=device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _assert_greedy(target, got, ref, dtype, what):
    """Every token of ``got`` is the target's argmax up to near-ties; in fp32 ``got`` also equals
    ``ref`` except for at most one row that parts from it at a near-tie."""
    bad = greedy_violations(target, PROMPTS, got, TIE[dtype])
    assert not bad, f"{what}: tokens that are not the target's greedy choice: {bad[:5]}"
    if dtype == "fp32":
        divs = greedy_divergences(target, PROMPTS, got, ref)
        assert len(divs) <= 1 and all(d["gap"] <= TIE[dtype] * d["scale"] for d in divs), f"{what}: {divs}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("preset", ["tiny-neox", "tiny-llama"])
def test_greedy_sd_equals_target_greedy(preset, dtype, device):
    target = build_preset(preset, 96, seed=0, initializer_range=0.2)
    draft = noisy_copy(target, 0.02, seed=1)
    target, draft = target.to(device, DTYPES[dtype]), draft.to(device, DTYPES[dtype])
    M = 40      # > 16 steps for the slow rows: cache compaction runs too
    ref = autoregressive_generate(target, PROMPTS, max_new_tokens=M).sequences
    assert all(len(s) == M for s in ref)
    hf = [_hf_greedy(target, p, M, device) for p in PROMPTS]
    _assert_greedy(target, ref, hf, dtype, "our autoregressive engine vs HF generate")
    for gamma in (1, 4):
        out = speculative_generate(target, draft, PROMPTS, gamma=gamma, max_new_tokens=M,
                                   generator=torch.Generator(device=device).manual_seed(0))
        assert all(len(s) == M for s in out.sequences)
        _assert_greedy(target, out.sequences, ref, dtype, f"SD gamma={gamma} vs target-only")
        counts = [n for row in out.accepted for n in row]
        assert 0 < sum(counts) < gamma * len(counts)        # partial acceptance: both paths exercised
        assert len({len(row) for row in out.accepted}) > 1  # rows advanced at different speeds


def _broken(q, p, tokens, gen):
    n, _ = verify(q, p, tokens, gen)
    rows = torch.arange(len(n), device=n.device)
    return n, torch.multinomial(p[rows, n], 1, generator=gen).squeeze(-1)   # forgets to subtract q


@pytest.mark.parametrize("dtype,gamma", [("fp32", 1), ("fp32", 3), ("bf16", 3)])
def test_sampled_sd_follows_the_target_distribution(dtype, gamma, device):
    V, N = 8, 3000
    target = build_preset("tiny-llama", V, seed=5, initializer_range=0.3).to(device, DTYPES[dtype])
    draft = build_preset("tiny-llama", V, seed=6, initializer_range=0.3).to(device, DTYPES[dtype])
    prompt = [1, 4, 2]
    with torch.no_grad():   # the target's own joint distribution of the first two tokens (V*V cells)
        p1 = torch.softmax(target(torch.tensor([prompt], device=device)).logits[0, -1].double(), -1)
        p2 = torch.softmax(target(torch.tensor([prompt + [a] for a in range(V)], device=device)).logits[:, -1]
                           .double(), -1)
    expected = (p1[:, None] * p2).flatten().cpu()

    def pvalue(verify_fn):
        out = speculative_generate(target, draft, [prompt] * N, gamma=gamma, max_new_tokens=2,
                                   sampling=SamplingConfig(temperature=1.0), verify_fn=verify_fn,
                                   generator=torch.Generator(device=device).manual_seed(123))
        return first_two_chisquare(out.sequences, expected, V), out

    p_ok, out = pvalue(verify)
    hist = out.stats.accept_hist
    assert hist[0] > 0 and sum(hist[1:]) > 0             # both accept and reject happened
    assert p_ok > 0.01
    p_bad, _ = pvalue(_broken)
    assert p_bad < 1e-4
