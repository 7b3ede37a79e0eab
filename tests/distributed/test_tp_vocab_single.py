"""vocab_parallel on one process (TP = 1, no process group): the degenerate case is the plain math.

Fast checks of the pieces the 2-rank test (test_tp_model.py) composes: shard ranges with
padding, normaliser with -inf padded columns, top-k / log-prob gather / argmax against the
full-vocabulary functions, the inverse-CDF sampler against sparse.target, Gumbel-max by
chi-square (with a control it must fail).
"""
import torch
from scipy.stats import chisquare

from adaspec_dist.sparse.target import draw_uniforms, merge_draws, sampled_targets, topk_targets
from adaspec_dist.models import vocab_parallel as vp


def test_shard_ranges_pad_to_a_multiple_of_tp():
    assert [vp.shard_range(101, r, 2) for r in range(2)] == [(0, 51, 102), (51, 102, 102)]
    assert vp.shard_range(101, 0, 1) == (0, 101, 101)
    ranges = [vp.shard_range(50277, r, 8) for r in range(8)]
    assert ranges[0][0] == 0 and ranges[-1][1] == ranges[0][2] >= 50277
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_single_shard_equals_full_vocab_math():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 101, generator=g) * 3
    padded = torch.cat([logits, torch.full((37, 1), float("-inf"))], 1)  # a padded row, as TPCausalLM
    ref = topk_targets(logits, 10)
    ids, logp = vp.topk(padded, 10, vocab_start=0, chunk_rows=8)
    assert torch.equal(ids, ref.ids) and torch.allclose(logp, ref.logp, atol=1e-6)
    assert torch.allclose(vp.log_normaliser(padded, chunk_rows=5), torch.logsumexp(logits, -1), atol=1e-6)
    probe = torch.randint(0, 101, (37, 4), generator=g)
    assert torch.allclose(vp.gather_logprobs(padded, probe, vocab_start=0),
                          torch.log_softmax(logits, -1).gather(1, probe), atol=1e-6)
    tie = torch.zeros(2, 6)
    tie[:, [2, 4]] = 1.0
    assert vp.argmax(tie, vocab_start=0).tolist() == [2, 2]  # lowest id wins, like torch.argmax
    assert torch.equal(vp.argmax(padded, vocab_start=0), logits.argmax(-1))


def test_inverse_cdf_reproduces_the_cache_sampler():
    logits = torch.randn(23, 101, generator=torch.Generator().manual_seed(1)) * 2
    padded = torch.cat([logits, torch.full((23, 1), float("-inf"))], 1)
    for temperature in (1.0, 0.5):
        want = sampled_targets(logits, 12, torch.Generator().manual_seed(5), temperature)
        u = draw_uniforms(23, 12, torch.Generator().manual_seed(5))
        x = vp.inverse_cdf_draws(padded, u, vocab_start=0, vocab_size=101, temperature=temperature)
        assert torch.equal(merge_draws(x, 101)[0], want.ids)


def test_gumbel_max_samples_the_softmax():
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(2)) * 2
    draws = vp.gumbel_sample(logits.expand(20000, -1), vocab_start=0, generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(draws, minlength=30).double().numpy()

    def p_value(probs):
        exp = probs.double().numpy() * 20000
        keep = exp >= 5
        return chisquare(counts[keep], exp[keep] * counts[keep].sum() / exp[keep].sum()).pvalue

    assert p_value(torch.softmax(logits[0], -1)) > 0.01
    assert p_value(torch.softmax(logits[0] * 1.2, -1)) < 1e-6
