"""A tensor-parallel target where the pipeline needs one: the cache job and speculative decoding.

Contract
--------
* ``load_tp_target(name_or_path, tp_group=, device=, dtype=, seed=) -> TPTargetLM``: THE loading
  of a tensor-parallel target (an HF checkpoint directory sliced over ``tp_group``); the cache's
  ``TargetFn`` and the eval's target load through it (``.model`` is the
  :class:`~adaspec_dist.models.tensor_parallel.TPCausalLM`).
* ``check_tp_top_p(top_p)``: the one refusal of ``top_p < 1`` with a TP target (a nucleus over
  shards needs a global sort); the eval config and :class:`TPTargetLM` call it.
* ``make_target_fn(name_or_path, ps, dtype=, scheme=, top_k=, draws=, temperature=) ->
  (TargetFn, vocab_size)``: the ``cache`` job's model call (``cache.produce.TargetFn``) over a :class:`~adaspec_dist.models.tensor_parallel.TPCausalLM`
  sharded over ``ps.tp_group``. Every rank of the TP group runs it on the same batch and gets
  the same :class:`~adaspec_dist.sparse.target.SparseTarget` (TP rank 0 writes it). ``topk``
  uses the global top-k (local top-k + all-gather of K·TP candidates); ``sampled`` reproduces
  ``sparse.sampled_targets`` exactly — same uniforms from the shard's generator, inverse CDF
  over the shards — so a TP cache equals the TP = 1 cache for either scheme.
* ``TPTargetLM(model, seed=...)``: the speculative decoder's ``speculative.lm.ShardedVocabLM``
  (satisfied structurally: models/ sits below speculative/ and does not import it):
  ``vocab_width``, ``device``, ``new_cache()``, ``forward(ids, pos, mask_B1QK, cache,
  logits_to_keep)`` returning THIS rank's logits slice, plus ``verify_logits(...)``: the
  vocab-parallel replacement of ``probs_from_logits`` + ``verify`` — p(x) of the drafted ids
  from the owning shard, the residual ``norm(max(0, p − q))`` and the bonus drawn by per-shard
  Gumbel-max + distributed argmax, greedy = distributed argmax. Acceptance uniforms come from
  the decoder's generator (seeded identically on every TP rank, like the replicated draft);
  Gumbel noise from a per-rank generator. Greedy output equals the TP = 1 decoder's.
  ``top_p < 1`` is refused (``check_tp_top_p``). For ``adaspec-dist
  eval`` it also has ``next_token(...)`` (the target-only baseline's pick: distributed argmax,
  or per-shard Gumbel-max) and ``overlap(...)`` (per-position Σ_x min(p, q) for α_logits: each
  rank sums its vocab slice with p normalised globally, then one SUM all-reduce).
* ``OnlineTPTeacher(path, tp_group=...)``: the online teacher for a data-parallel student —
  the ranks of a TP group (``dist.grid_groups(tp).tp_group``) pool their micro-batches through
  one sharded target; each rank gets the SparseTarget rows of its own batch (see the class doc).

Shapes: B rows, G gamma, Q new tokens, N supervised positions, V this shard's vocab width,
D draws.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from adaspec_dist.models import vocab_parallel as vp
from adaspec_dist.models.precision import torch_dtype as precision_dtype
from adaspec_dist.models.source import local_model
from adaspec_dist.models.tensor_parallel import load_tp_model
from adaspec_dist.sparse.target import SparseTarget, draw_uniforms, merge_draws


def sparse_target_fn(model: Any, *, scheme: str, top_k: int = 64, draws: int = 32, temperature: float = 1.0):
    """``TargetFn`` (cache.produce) over a loaded TPCausalLM: -> SparseTarget, equal on every TP rank."""
    V, start, group = model.vocab_size, model.vocab_start, model.tp_group
    if scheme == "topk" and not 1 <= top_k <= V:
        raise ValueError(f"top_k={top_k} must be between 1 and the vocabulary size {V}")

    @torch.no_grad()
    def target(input_ids_BT, attention_mask_BT, loss_mask_BT, generator):
        logits_NV = model(input_ids_BT, attention_mask=attention_mask_BT)[loss_mask_BT]
        if scheme == "topk":
            ids, logp = vp.topk(logits_NV, top_k, vocab_start=start, group=group)
            return SparseTarget(ids=ids, logp=logp, weights=None, scheme="topk").to("cpu")
        # The same uniforms as sparse.sampled_targets (every TP rank holds the same generator state).
        u_ND = draw_uniforms(logits_NV.shape[0], draws, generator)
        x_ND = vp.inverse_cdf_draws(logits_NV, u_ND, vocab_start=start, vocab_size=V, group=group,
                                    temperature=temperature)
        ids, counts = merge_draws(x_ND, V)
        logz = vp.log_normaliser(logits_NV, group)
        logp = vp.gather_logprobs(logits_NV, ids, vocab_start=start, group=group, logz=logz)
        w = counts.float() / draws
        if temperature != 1.0:
            lq = vp.gather_logprobs(logits_NV / temperature, ids, vocab_start=start, group=group)
            w = w * (logp - lq).exp()
            w = w / w.sum(-1, keepdim=True)
        return SparseTarget(ids=ids, logp=logp, weights=w, scheme="sampled", plogp=(w * logp).sum(-1),
                            counts=counts).to("cpu")

    target.model = model  # for callers that report on it (memory benchmarks, logs)
    return target


TP_TOP_P_REFUSAL = "top_p < 1 is not supported with a tensor-parallel target (tp > 1); use top_p=1"


def check_tp_top_p(top_p: float) -> None:
    """Refuse nucleus sampling with a TP target: the nucleus would need a global sort over shards."""
    if top_p < 1.0:
        raise ValueError(TP_TOP_P_REFUSAL)


def load_tp_target(name_or_path: str | os.PathLike | None, *, tp_group: Any, device: Any = "cpu",
                   dtype: str | torch.dtype = "auto", seed: int = 0) -> "TPTargetLM":
    """Load an HF checkpoint directory as a TP target sharded over ``tp_group`` (collective: every
    rank of the group calls it). ``dtype``: a ``ModelConfig.dtype`` name or a torch dtype;
    ``seed``: of the per-rank Gumbel generator (:class:`TPTargetLM`)."""
    if not name_or_path:
        raise ValueError("a tensor-parallel target needs name_or_path (an HF checkpoint directory to slice), "
                         "not a preset")
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else precision_dtype(dtype, device)
    model = load_tp_model(local_model(str(name_or_path)), tp_group=tp_group, dtype=torch_dtype, device=device)
    return TPTargetLM(model, seed=seed)


def make_target_fn(name_or_path: str | None, ps: Any, *, dtype: str, scheme: str, top_k: int, draws: int,
                   temperature: float):
    """The TP implementation of ``cache.produce.TargetFn`` (see module doc).

    ``name_or_path``: the HF checkpoint directory to slice over ``ps.tp_group`` (on ``ps.device``);
    ``dtype``: a ``ModelConfig.dtype`` name; the rest as in :func:`sparse_target_fn`.
    """
    model = load_tp_target(name_or_path, tp_group=ps.tp_group, device=ps.device, dtype=dtype).model
    fn = sparse_target_fn(model, scheme=scheme, top_k=top_k, draws=draws, temperature=temperature)
    return fn, model.vocab_size


class OnlineTPTeacher:
    """A TP target as the online teacher of a purely data-parallel student (issue 6, part 5).

    Every rank trains the student on its own micro-batch. The ranks of ``tp_group`` (contiguous
    ranks: ``dist.grid_groups(tp_size).tp_group``, built there; every rank of the group must
    construct the teacher) share one sharded target: they all-gather their micro-batches (any B
    and T), run the TP target once on the union, and each rank keeps the :class:`SparseTarget`
    rows of its own supervised positions (row-major, as the cache stores them). Sampled targets
    draw from an internal generator seeded identically on the group's ranks. Feeding these rows
    to the trainer's cached-mode losses gives the online behaviour with a target no rank could
    hold.
    """

    def __init__(self, path: str, *, tp_group: Any, scheme: str = "topk", top_k: int = 64, draws: int = 32,
                 temperature: float = 1.0, dtype: torch.dtype = torch.float32, device: Any = "cpu", seed: int = 0):
        self.group = tp_group
        self.model = load_tp_target(path, tp_group=tp_group, device=device, dtype=dtype).model
        self.fn = sparse_target_fn(self.model, scheme=scheme, top_k=top_k, draws=draws, temperature=temperature)
        self.generator = torch.Generator().manual_seed(seed)
        self.vocab_size = self.model.vocab_size

    @torch.no_grad()
    def __call__(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor, loss_mask_BT: torch.Tensor):
        import torch.distributed as dist

        tp, me = dist.get_world_size(self.group), dist.get_rank(self.group)
        dev = input_ids_BT.device
        shape = torch.tensor([input_ids_BT.shape[0], input_ids_BT.shape[1], int(loss_mask_BT.sum())], device=dev)
        shapes = [torch.empty_like(shape) for _ in range(tp)]
        dist.all_gather(shapes, shape, group=self.group)
        b_max, t_max = max(int(s[0]) for s in shapes), max(int(s[1]) for s in shapes)

        def gather(x: torch.Tensor) -> torch.Tensor:
            padded = torch.zeros(b_max, t_max, dtype=x.dtype, device=dev)
            padded[:x.shape[0], :x.shape[1]] = x
            parts = [torch.empty_like(padded) for _ in range(tp)]
            dist.all_gather(parts, padded, group=self.group)
            return torch.cat([p[:int(s[0])] for p, s in zip(parts, shapes)])

        target = self.fn(gather(input_ids_BT), gather(attention_mask_BT), gather(loss_mask_BT.bool()), self.generator)
        starts = [0]
        for s in shapes:
            starts.append(starts[-1] + int(s[2]))
        return target[starts[me]:starts[me + 1]]


class TPTargetLM:
    """A TP-sharded target for ``speculative.decoder``: a ``speculative.lm.ShardedVocabLM`` (see module doc).

    Keep its members and their signatures equal to the protocol's; tests/unit/test_lm_protocol.py
    checks them.
    """

    def __init__(self, model: Any, *, seed: int = 0):
        self.model = model
        self.vocab_width = model.vocab_size
        self.device = next(model.parameters()).device
        self.group = model.tp_group
        # Gumbel noise must be independent across shards: one generator per TP rank.
        self.local_gen = torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + 7919 * model.tp_rank)

    def new_cache(self):
        return self.model.new_cache()

    @torch.inference_mode()
    def forward(self, input_ids_BQ, position_ids_BQ, attention_mask_B1QK, cache, logits_to_keep: int = 0):
        return self.model(input_ids_BQ, attention_mask=attention_mask_B1QK, position_ids=position_ids_BQ,
                          cache=cache, logits_to_keep=logits_to_keep)

    def _masked(self, logits_XV: torch.Tensor, vocab: int) -> torch.Tensor:
        """Drop ids >= the decoder's real vocabulary (a draft narrower than the padded target head)."""
        cut = vocab - self.model.vocab_start
        if cut >= logits_XV.shape[-1]:
            return logits_XV.float()
        out = logits_XV.float().clone()
        out[..., max(cut, 0):] = float("-inf")
        return out

    @torch.inference_mode()
    def verify_logits(self, logits_BG1V: torch.Tensor, draft_probs_BGV: torch.Tensor, draft_tokens_BG: torch.Tensor,
                      vocab: int, sampling: Any, generator: torch.Generator | None = None):
        """Vocab-parallel ``verify``: -> (accepted_len_B, next_token_B), identical on every TP rank."""
        check_tp_top_p(sampling.top_p)
        B, G1, _ = logits_BG1V.shape
        G, start, group = G1 - 1, self.model.vocab_start, self.group
        rows = torch.arange(B, device=logits_BG1V.device)
        logits = self._masked(logits_BG1V, vocab).reshape(B * G1, -1)
        if sampling.temperature == 0:
            # Greedy: accept while the draft equals the target's argmax; the next token is the argmax.
            best = vp.argmax(logits, vocab_start=start, group=group).view(B, G1)
            n = (draft_tokens_BG == best[:, :G]).long().cumprod(1).sum(1)
            return n, best[rows, n]
        scaled = logits / sampling.temperature
        logz = vp.log_normaliser(scaled, group)
        ids = torch.cat([draft_tokens_BG, draft_tokens_BG[:, :1]], 1).reshape(B * G1, 1)
        p_x = vp.gather_logprobs(scaled, ids, vocab_start=start, group=group, logz=logz).exp().view(B, G1)[:, :G]
        q_x = draft_probs_BGV.gather(-1, draft_tokens_BG[..., None]).squeeze(-1)
        u = torch.rand((B, G), generator=generator, device=logits.device)   # same draw as verify.verify
        n = ((u * q_x < p_x).long().cumprod(1)).sum(1)
        # Residual max(0, p - q) on this shard at position n (the bonus is p itself at n == G).
        logp_n = (scaled - logz[:, None]).view(B, G1, -1)[rows, n]
        v_local = logp_n.shape[-1]
        q_n = draft_probs_BGV[rows, n.clamp(max=G - 1), start:start + v_local].float()
        q_n = torch.nn.functional.pad(q_n, (0, v_local - q_n.shape[-1]))  # draft narrower than the shard
        residual = (logp_n.exp() - q_n).clamp_min(0.0)
        has_mass = vp.global_sum(residual.sum(-1), group) > 0
        use_p = (n == G) | ~has_mass
        logw = torch.where(use_p[:, None], logp_n, residual.log())
        nxt = vp.gumbel_sample(logw, vocab_start=start, group=group, generator=self.local_gen)
        return n, nxt

    @torch.inference_mode()
    def next_token(self, logits_BV: torch.Tensor, vocab: int, sampling: Any,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """The autoregressive baseline's pick (B,), identical on every TP rank.

        Greedy = distributed argmax (equals the TP = 1 pick); sampling = Gumbel-max over the
        shards with the per-rank generator (exact, but not the TP = 1 stream of draws:
        ``generator``, shared by the ranks, is not used).
        """
        check_tp_top_p(sampling.top_p)
        logits = self._masked(logits_BV, vocab)
        start, group = self.model.vocab_start, self.group
        if sampling.temperature == 0:
            return vp.argmax(logits, vocab_start=start, group=group)
        return vp.gumbel_sample(logits / sampling.temperature, vocab_start=start, group=group,
                                generator=self.local_gen)

    @torch.inference_mode()
    def overlap(self, logits_NV: torch.Tensor, draft_probs_NV: torch.Tensor, vocab: int, sampling: Any) -> torch.Tensor:
        """Σ_x min(p(x), q(x)) per position (N,) fp32, identical on every TP rank (α_logits' term).

        ``draft_probs_NV`` is the draft's full q over the ``vocab`` real ids (as
        ``sampling.probs_from_logits`` makes it); this rank compares it with p on its own columns
        only. Greedy p is the one-hot of the distributed argmax, so the term is q(argmax p).
        """
        check_tp_top_p(sampling.top_p)
        logits = self._masked(logits_NV, vocab)
        start, group = self.model.vocab_start, self.group
        q = draft_probs_NV.float()
        if sampling.temperature == 0:
            best = vp.argmax(logits, vocab_start=start, group=group)
            return q.gather(1, best[:, None])[:, 0]
        scaled = logits / sampling.temperature
        p_local = (scaled - vp.log_normaliser(scaled, group)[:, None]).exp()      # padded / cut ids: 0
        v_local = p_local.shape[-1]
        q_local = q[:, start:start + v_local]
        q_local = torch.nn.functional.pad(q_local, (0, v_local - q_local.shape[-1]))  # ids >= vocab: q = 0
        return vp.global_sum(torch.minimum(p_local, q_local).sum(-1), group)
