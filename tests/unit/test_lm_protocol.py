"""The decoder's model protocols: which objects count as a ``CausalLM`` / ``ShardedVocabLM``, and
``TPTargetLM`` (models/, which may not import speculative/) keeps the ``ShardedVocabLM`` members
and signatures."""
import inspect

import torch

from adaspec_dist.models.tp_target import TPTargetLM
from adaspec_dist.speculative.lm import CausalLM, HFCausalLM, ShardedVocabLM, as_causal_lm, is_sharded_vocab

SHARDED_METHODS = ("verify_logits", "next_token", "overlap")


class _Plain:
    vocab_width = 8
    device = torch.device("cpu")

    def new_cache(self):
        return None

    def forward(self, input_ids_BQ, position_ids_BQ, attention_mask_B1QK, cache, logits_to_keep=0):
        return torch.zeros(input_ids_BQ.shape + (8,))


class _FakeTPModel(torch.nn.Module):
    """The members TPTargetLM reads from a TPCausalLM, without megatron or a process group."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size, self.vocab_start, self.tp_rank, self.tp_group = 8, 0, 0, None


def test_plain_model_is_a_causal_lm_not_sharded():
    plain = _Plain()
    assert isinstance(plain, CausalLM) and not is_sharded_vocab(plain)
    assert as_causal_lm(plain) is plain


def test_hf_model_is_wrapped_and_not_sharded():
    from adaspec_dist.models.load import build_preset

    model = build_preset("tiny-neox", 40, seed=0)
    assert not isinstance(model, CausalLM)
    lm = as_causal_lm(model)
    assert isinstance(lm, HFCausalLM) and isinstance(lm, CausalLM) and not is_sharded_vocab(lm)


def test_tp_target_satisfies_sharded_vocab_lm():
    lm = TPTargetLM(_FakeTPModel())
    assert isinstance(lm, ShardedVocabLM) and is_sharded_vocab(lm)
    assert as_causal_lm(lm) is lm


def test_tp_target_signatures_match_the_protocol():
    for name in ("forward", "new_cache") + SHARDED_METHODS:
        want = list(inspect.signature(getattr(ShardedVocabLM, name)).parameters)
        got = list(inspect.signature(getattr(TPTargetLM, name)).parameters)
        assert got == want, f"TPTargetLM.{name}{got} != ShardedVocabLM.{name}{want}"


def test_missing_one_sharded_method_is_not_sharded():
    class Partial(_Plain):
        def verify_logits(self, *a):
            raise AssertionError

        def next_token(self, *a):
            raise AssertionError

    assert not is_sharded_vocab(Partial())
