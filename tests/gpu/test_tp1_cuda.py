"""megatron-core's parallel layers on the device, in a one-rank tensor-parallel group (NCCL on
CUDA): the TP model's logits and KV-cache decoding equal the HF model's, and greedy speculative
decoding with the TP target (vocab-parallel verify and argmax, their collectives included) equals
decoding with the HF target. Two GPUs and ``cache --tp 2`` are section 5 of benchmarks/gpu_suite.py;
the 2-rank gloo version is tests/distributed/test_tp_model.py."""
import pytest
import torch

from adaspec_dist.dist import init_distributed
from adaspec_dist.models.load import build_preset, save_hf
from adaspec_dist.models.tp_target import load_tp_target
from adaspec_dist.speculative.decoder import speculative_generate
from tests.gpu.checks import greedy_divergences, noisy_copy

pytestmark = pytest.mark.gpu
VOCAB = 101


@pytest.mark.parametrize("preset", ["tiny-neox", "tiny-llama"])
def test_tp1_megatron_model_matches_hf(preset, device, tmp_path):
    ps = init_distributed(tp_size=1)
    hf = build_preset(preset, VOCAB, seed=0, initializer_range=0.2)
    save_hf(hf, tmp_path / "ckpt")
    hf = hf.to(device)
    tp = load_tp_target(tmp_path / "ckpt", tp_group=ps.tp_group, device=device, dtype="float32")
    ids = torch.randint(3, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0                                   # a left-padded row
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits.float()
        got = tp.model(ids, attention_mask=mask)[..., :VOCAB]
        keep = mask.bool()
        assert (got[keep] - want[keep]).abs().max() < 1e-4
        # KV cache: prefix, then one token at a time
        cache = tp.model.new_cache()
        step = [tp.model(ids[:1, :8], cache=cache)[..., :VOCAB]]
        for t in range(8, 12):
            step.append(tp.model(ids[:1, t:t + 1], cache=cache)[..., :VOCAB])
        assert (torch.cat(step, 1) - want[:1]).abs().max() < 1e-4
    prompts = [[5, 17, 33, 2, 9], [7], [12, 13, 14, 15]]
    draft = noisy_copy(hf, 0.02, seed=1)
    ref = speculative_generate(hf, draft, prompts, gamma=3, max_new_tokens=24).sequences
    out = speculative_generate(tp, draft, prompts, gamma=3, max_new_tokens=24,
                               generator=torch.Generator(device=device).manual_seed(0)).sequences
    divs = greedy_divergences(hf, prompts, out, ref)
    assert len(divs) <= 1 and all(d["gap"] < 1e-4 * d["scale"] for d in divs), divs
    # bf16 weights: the same forward runs and stays close
    tp16 = load_tp_target(tmp_path / "ckpt", tp_group=ps.tp_group, device=device, dtype="bfloat16")
    with torch.no_grad():
        got16 = tp16.model(ids, attention_mask=mask)[..., :VOCAB]
    assert torch.isfinite(got16[keep]).all() and (got16[keep] - want[keep]).abs().max() < 0.1 * want.abs().max()
