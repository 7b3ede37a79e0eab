"""verify() and sampling.py: exact behaviour on constructed distributions, and the statistics."""
import pytest
import torch
from scipy import stats

from adaspec_dist.speculative.sampling import probs_from_logits, real_vocab_size, sample
from adaspec_dist.speculative.verify import verify


def _onehot(ids, V):
    return torch.nn.functional.one_hot(torch.tensor(ids), V).float()


def test_rows_always_never_partial_in_one_batch():
    V, G = 4, 3
    uniform = torch.full((V,), 1 / V)
    # row 0: p == q everywhere -> all accepted, bonus from p_G (one-hot on 2)
    q0 = uniform.expand(G, V)
    p0 = torch.cat([uniform.expand(G, V), _onehot([2], V)])
    # row 1: the first draft token has p(x) = 0 -> rejected; residual max(0, p - q) = one-hot 0
    q1 = _onehot([1, 1, 1], V)
    p1 = torch.cat([_onehot([0], V), uniform.expand(G, V)])
    # row 2: first accepted (p == q), second has p(x) = 0 -> residual one-hot 3
    q2 = torch.stack([uniform, _onehot([1], V)[0], uniform])
    p2 = torch.stack([uniform, torch.tensor([0.0, 0.0, 0.5, 0.5]), uniform, uniform])
    draft_probs = torch.stack([q0, q1, q2])
    target_probs = torch.stack([p0, p1, p2])
    tokens = torch.tensor([[0, 3, 1], [1, 1, 1], [2, 1, 0]])
    for seed in range(20):
        n, nxt = verify(draft_probs, target_probs, tokens, torch.Generator().manual_seed(seed))
        assert n.tolist() == [3, 0, 1]
        assert nxt[:2].tolist() == [2, 0]
        # row 2's residual is max(0, [0,0,.5,.5] - [0,1,0,0]) = [0,0,.5,.5]: token 2 or 3
        assert nxt[2].item() in (2, 3)


def test_greedy_is_the_one_hot_case():
    V, G = 6, 3
    target_logits = torch.randn(5, G + 1, V, generator=torch.Generator().manual_seed(0))
    draft_logits = target_logits.clone()
    draft_logits[:, 1] = -draft_logits[:, 1]            # drafts disagree with the target at position 2
    p, q = probs_from_logits(target_logits, 0.0), probs_from_logits(draft_logits[:, :G], 0.0)
    tokens = q.argmax(-1)
    n, nxt = verify(q, p, tokens, torch.Generator().manual_seed(1))
    assert n.tolist() == [1] * 5
    assert torch.equal(nxt, target_logits[:, 1].argmax(-1))


def test_acceptance_probability_is_min_one_p_over_q():
    # p(x)/q(x) = 0.3/0.6 = 0.5 for the drafted id
    N, V = 20000, 3
    q = torch.tensor([0.6, 0.2, 0.2]).expand(N, 1, V)
    p = torch.tensor([[0.3, 0.4, 0.3], [0.2, 0.5, 0.3]]).expand(N, 2, V)
    n, _ = verify(q, p, torch.zeros((N, 1), dtype=torch.long), torch.Generator().manual_seed(0))
    accepted = int(n.sum())
    assert stats.binomtest(accepted, N, 0.5).pvalue > 0.01


def _output_distribution_test(verify_fn, seed=0, N=20000, V=5):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(V, generator=gen) * 1.5, -1)
    q = torch.softmax(torch.randn(V, generator=gen) * 1.5, -1)
    draft_tokens = torch.multinomial(q.expand(N, V), 1, replacement=True, generator=gen)     # N,1
    target = torch.stack([p, torch.softmax(torch.randn(V, generator=gen), -1)]).expand(N, 2, V)
    n, nxt = verify_fn(q.expand(N, 1, V), target, draft_tokens, gen)
    first = torch.where(n == 1, draft_tokens[:, 0], nxt)
    counts = torch.bincount(first, minlength=V).double()
    expected = p.double() / p.double().sum() * N
    return stats.chisquare(counts.numpy(), expected.numpy()).pvalue


def test_first_token_distribution_is_the_target_s():
    assert _output_distribution_test(verify) > 0.01


def test_chi_square_catches_a_verifier_that_resamples_from_p():
    def broken(q, p, tokens, gen):
        n, _ = verify(q, p, tokens, gen)
        rows = torch.arange(len(n))
        return n, torch.multinomial(p[rows, n], 1, generator=gen).squeeze(-1)   # ignores the residual
    assert _output_distribution_test(broken) < 1e-6


def test_top_p_and_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(probs_from_logits(logits, 1.0, 0.8), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.allclose(probs_from_logits(logits, 1.0, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    hot = probs_from_logits(logits, 0.1)
    assert hot[0, 0] > 0.99
    assert probs_from_logits(logits, 0.0).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert sample(probs_from_logits(logits, 0.0).expand(3, 4)).tolist() == [0, 0, 0]


def test_real_vocab_size():
    assert real_vocab_size(50304, 50277) == 50277
    assert real_vocab_size(50304, 50304, tokenizer_len=50277) == 50277
    with pytest.raises(ValueError, match="differ by more than padding"):
        real_vocab_size(50304, 32000)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        real_vocab_size(640, 600, tokenizer_len=640)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_probabilities_in_row_chunks_equal_all_rows_at_once(temperature, top_p):
    """The decoder's verify step computes p over B x (G+1) rows chunk by chunk (models.head.map_row_chunks):
    bit for bit the values of one call over all rows, whatever the chunk size."""
    from adaspec_dist.models.head import map_row_chunks
    from adaspec_dist.speculative.sampling import probs_from_logits

    logits = torch.randn(4, 5, 300, generator=torch.Generator().manual_seed(0)) * 3
    whole = probs_from_logits(logits, temperature, top_p)
    for max_elems in (300, 7 * 300, 1 << 24):
        chunked = map_row_chunks(lambda z: probs_from_logits(z, temperature, top_p), logits, max_elems)
        assert chunked.shape == whole.shape and torch.equal(chunked, whole)
