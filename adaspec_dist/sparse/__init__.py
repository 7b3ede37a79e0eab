"""The bottom math shared by cache, distill, models and speculative (imports only torch/numpy).

target.py      SparseTarget and its encoders: top-k and importance-sampled ids, the stored value
               dtypes (encode_values / decode_values), the CPU uniforms a TP sampler reproduces
divergence.py  per-token divergences (`DIVERGENCES`: fkl, rkl, jsd, tvd) and acceptance on full logits and on a
               SparseTarget: the one estimator both L_ref (cache) and L_draft (trainer) use
"""
