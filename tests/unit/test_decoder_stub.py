"""The decoder with stub models of fixed (bigram) logits: rows that always, never and partly
accept, in ONE batch, behave exactly as the algorithm says."""
import torch

from adaspec_dist.speculative.decoder import autoregressive_generate, speculative_generate
from adaspec_dist.speculative.sampling import SamplingConfig

V, GROUP = 30, 10


class _NoCache:
    layers: list = []

    def batch_select_indices(self, rows):
        pass


class BigramStub:
    """CausalLM whose logits depend only on the input token: next = table[token]."""

    def __init__(self, table, sharp=20.0):
        self.table = torch.tensor(table)
        self.sharp = sharp
        self.vocab_width = V
        self.device = torch.device("cpu")
        self.calls = 0

    def new_cache(self):
        return _NoCache()

    def forward(self, input_ids, position_ids, attention_mask, cache, logits_to_keep=0):
        self.calls += 1
        assert attention_mask.shape[:3] == (input_ids.shape[0], 1, input_ids.shape[1])
        logits = torch.nn.functional.one_hot(self.table[input_ids], V).float() * self.sharp
        return logits[:, -logits_to_keep:] if logits_to_keep else logits


def _target_next(x):            # each group of 10 ids cycles within itself
    return GROUP * (x // GROUP) + (x + 1) % GROUP


def _draft_next(x):
    g = x // GROUP
    if g == 1:                  # "never": always proposes the id after the right one
        return GROUP * g + (x + 2) % GROUP
    if g == 2 and x % GROUP == 4:   # "partial": wrong only after ids ending in 4
        return GROUP * g + (x + 2) % GROUP
    return _target_next(x)      # group 0: always right


def _expected(prompt, k):
    out, x = [], prompt[-1]
    for _ in range(k):
        x = _target_next(x)
        out.append(x)
    return out


def test_always_never_partial_rows_greedy():
    target, draft = BigramStub([_target_next(x) for x in range(V)]), BigramStub([_draft_next(x) for x in range(V)])
    prompts = [[3, 5], [11], [27, 28, 20]]          # groups 0, 1, 2
    G, M = 4, 12
    out = speculative_generate(target, draft, prompts, gamma=G, max_new_tokens=M,
                               generator=torch.Generator().manual_seed(0))
    assert out.sequences == [_expected(p, M) for p in prompts]
    always, never, partial = out.accepted
    assert always == [G] * 3                         # 5 tokens per step: 3 steps reach 12
    assert never == [0] * M                          # 1 token per step
    # row 2 starts after 20: drafts 21..24 accepted, then 25 is proposed after 24 -> wrong.
    # steps: [21,22,23,24 | next after 24 is wrong -> 4 accepted + bonus 25]; every step's
    # first draft comes from the previous bonus, so: the exact sequence of accepted counts
    x, expect = 20, []
    while sum(n + 1 for n in expect) < M:
        n = 0
        while n < G and _draft_next(x) == _target_next(x):
            x, n = _target_next(x), n + 1
        x = _target_next(x)   # the residual/bonus token is the target's
        expect.append(n)
    assert partial == expect
    assert out.stats.accept_hist[G] == 3 + partial.count(G)
    # one prefill, then one target call and G draft calls per step of the longest row
    steps = max(len(a) for a in out.accepted)
    assert (target.calls, draft.calls) == (1 + steps, 1 + G * steps)


def test_sampling_rows_with_identical_and_disjoint_drafts():
    """At temperature 1: q == p is always accepted; q with support where p has none never is."""
    table_t = [_target_next(x) for x in range(V)]
    table_d = [_draft_next(x) if x // GROUP == 1 else _target_next(x) for x in range(V)]
    target, draft = BigramStub(table_t, sharp=60.0), BigramStub(table_d, sharp=60.0)
    out = speculative_generate(target, draft, [[1], [15]], gamma=3, max_new_tokens=9,
                               sampling=SamplingConfig(temperature=1.0),
                               generator=torch.Generator().manual_seed(0))
    assert out.accepted == [[3, 3, 3], [0] * 9]
    assert out.sequences == [_expected([1], 9), _expected([15], 9)]


def test_finished_rows_drop_out_and_eos_cuts():
    target, draft = BigramStub([_target_next(x) for x in range(V)]), BigramStub([_draft_next(x) for x in range(V)])
    eos = 7
    out = speculative_generate(target, draft, [[3], [13], [5]], gamma=2, max_new_tokens=10, eos_token_id=eos,
                               generator=torch.Generator().manual_seed(0))
    assert out.sequences[0] == [4, 5, 6, 7]          # EOS inside an accepted run cuts there
    assert out.sequences[1] == _expected([13], 10)
    assert out.sequences[2] == [6, 7]
    assert len(out.accepted[0]) == 2 and len(out.accepted[2]) == 1
    base = autoregressive_generate(target, [[3], [13], [5]], max_new_tokens=10, eos_token_id=eos)
    assert base.sequences == out.sequences
