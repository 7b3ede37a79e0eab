"""The decoder on tiny real GPTNeoX / Llama models: greedy SD == the target's own greedy output
for ragged prompts, and sampled SD draws from the target's distribution (chi-square)."""
import pytest
import torch

from adaspec_dist.models.load import build_preset
from adaspec_dist.speculative.decoder import autoregressive_generate, speculative_generate
from adaspec_dist.speculative.sampling import SamplingConfig
from adaspec_dist.speculative.verify import verify
from tests.helpers import first_two_chisquare


def _pair(preset, vocab, noise, seed=0):
    """A peaky random target and a draft = the target with seeded weight noise (partial agreement)."""
    target = build_preset(preset, vocab, seed=seed, initializer_range=0.2)
    draft = build_preset(preset, vocab, seed=seed, initializer_range=0.2)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    return target, draft


def _hf_greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("preset", ["tiny-neox", "tiny-llama"])
def test_greedy_sd_equals_target_greedy(preset):
    target, draft = _pair(preset, 96, noise=0.02)
    prompts = [[5, 17, 33, 2, 9, 41, 60], [7], [12, 13, 14], [88] * 11, [30, 31]]
    M = 40      # > 16 steps for the slow rows: exercises cache compaction too
    ref = [_hf_greedy(target, p, M) for p in prompts]
    for gamma in (1, 4):
        out = speculative_generate(target, draft, prompts, gamma=gamma, max_new_tokens=M,
                                   generator=torch.Generator().manual_seed(0))
        assert out.sequences == ref
        counts = [n for row in out.accepted for n in row]
        assert 0 < sum(counts) < gamma * len(counts)       # partial acceptance: both paths exercised
        assert len({len(row) for row in out.accepted}) > 1  # rows advanced at different speeds
    assert autoregressive_generate(target, prompts, max_new_tokens=M).sequences == ref
    # EOS: rows stop at their first EOS, the others are unaffected
    eos = ref[0][5]
    cut = [r[: r.index(eos) + 1] if eos in r else r for r in ref]
    out = speculative_generate(target, draft, prompts, gamma=3, max_new_tokens=M, eos_token_id=eos)
    assert out.sequences == cut


def test_padded_target_vocabulary_is_ignored():
    target = build_preset("tiny-llama", 64 + 40, seed=3, initializer_range=0.2)
    draft = build_preset("tiny-llama", 64, seed=4, initializer_range=0.2)
    with torch.no_grad():   # make the padded ids the target's favourites: they must still never appear
        target.lm_head.weight[64:] = target.lm_head.weight[:40] * 5
    out = speculative_generate(target, draft, [[1, 2, 3], [4]], gamma=3, max_new_tokens=20,
                               sampling=SamplingConfig(temperature=1.0), generator=torch.Generator().manual_seed(0))
    assert max(max(s) for s in out.sequences) < 64
    with pytest.raises(ValueError, match="differ by more than padding"):
        speculative_generate(target, build_preset("tiny-llama", 512), [[1]], gamma=2, max_new_tokens=2)


def _joint_first_two(target, prompt, V):
    """Target distribution of the first two generated tokens (V*V cells), at temperature 1."""
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt])).logits[0, -1].double(), -1)
        seqs = torch.tensor([prompt + [a] for a in range(V)])
        p2 = torch.softmax(target(seqs).logits[:, -1].double(), -1)
    return (p1[:, None] * p2).flatten()


def _sd_first_two(target, draft, prompt, verify_fn, N, gamma):
    out = speculative_generate(target, draft, [prompt] * N, gamma=gamma, max_new_tokens=2,
                               sampling=SamplingConfig(temperature=1.0), verify_fn=verify_fn,
                               generator=torch.Generator().manual_seed(123))
    return out


def _broken(q, p, tokens, gen):
    n, _ = verify(q, p, tokens, gen)
    rows = torch.arange(len(n))
    return n, torch.multinomial(p[rows, n], 1, generator=gen).squeeze(-1)   # forgets to subtract q


@pytest.mark.parametrize("gamma", [1, 3])
def test_sampled_tokens_follow_the_target_distribution(gamma):
    V, N = 8, 3000
    target = build_preset("tiny-llama", V, seed=5, initializer_range=0.3)
    draft = build_preset("tiny-llama", V, seed=6, initializer_range=0.3)
    prompt = [1, 4, 2]
    expected = _joint_first_two(target, prompt, V)

    def pvalue(verify_fn):
        out = _sd_first_two(target, draft, prompt, verify_fn, N, gamma)
        return first_two_chisquare(out.sequences, expected, V), out

    p_ok, out = pvalue(verify)
    hist = out.stats.accept_hist
    assert hist[0] > 0 and sum(hist[1:]) > 0             # both accept and reject happened
    assert p_ok > 0.01
    p_bad, _ = pvalue(_broken)
    assert p_bad < 1e-4


@pytest.mark.parametrize("preset", ["tiny-neox", "tiny-llama"])
def test_holes_are_invisible_and_compaction_keeps_logits(preset):
    """A row with hole slots (garbage tokens masked out, explicit positions) gives the same logits
    as the same tokens without holes; compacting all-hole columns changes nothing."""
    from adaspec_dist.speculative.kv_cache import SlotCache
    from adaspec_dist.speculative.lm import HFCausalLM

    lm = HFCausalLM(build_preset(preset, 40, seed=2, initializer_range=0.2))
    real = [3, 9, 4, 22, 17]
    ids = torch.tensor([[3, 31, 9, 4, 35, 22, 17], real + [0, 0]])          # row 0: holes at slots 1 and 4
    valid = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    pos = (valid.long().cumsum(1) - 1).clamp_min(0)
    slot = SlotCache(lm.new_cache(), 2, "cpu")
    lm.forward(ids, pos, slot.attention_mask(valid), slot.cache)
    slot.append(valid)
    nxt = torch.tensor([[5], [5]])
    step_pos = torch.tensor([[5], [5]])
    one = torch.ones((2, 1), dtype=torch.bool)
    before = lm.forward(nxt, step_pos, slot.attention_mask(one), slot.cache)
    slot.cache.crop(-1)
    assert torch.allclose(before[0], before[1], atol=1e-5)                  # holes invisible
    assert slot.compact() == 0                                              # no column is a hole in both rows
    slot.keep_last(torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool))
    slot.valid_BS[0, 4] = False                                             # slot 4: a hole in both rows now
    assert slot.compact() == 1 and slot.num_slots == 6
    after = lm.forward(nxt, step_pos, slot.attention_mask(one), slot.cache)
    assert torch.allclose(after[0], before[0], atol=1e-5)
