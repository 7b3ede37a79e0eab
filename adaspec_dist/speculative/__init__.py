"""Batched speculative decoding and acceptance evaluation.

sampling.py  p and q from logits (temperature, top-p, greedy = one-hot), per-row counter-based
             draws, real vocabulary size
verify.py    pure batched rejection sampling: verify(q, p, drafts, generator) -> (n, next)
kv_cache.py  SlotCache: one padded KV cache per model, rejected slots become masked holes
lm.py        CausalLM / ShardedVocabLM protocols the decoder drives (HF adapter; a TP target
             implements ShardedVocabLM: it verifies and picks tokens on its vocab shard)
decoder.py   speculative_generate / autoregressive_generate (ragged rows, row drop-out)
metrics.py   alpha_logits, tau, per-position acceptance, theory and bounds
evaluate.py  the eval job: evaluate(EvalConfig) -> dict; evaluate_drafts(target, drafts, prompts,
             held_out, cfg) -> dict          (its CLI is adaspec_dist/cli/eval.py)
report.py    table, JSON, PNG plots, tensorboard
generate.py  the generate job: generate(GenerateConfig) -> manifest: n sampled continuations per
             prompt (on-policy training data for cache)  (its CLI is adaspec_dist/cli/generate.py)
"""
