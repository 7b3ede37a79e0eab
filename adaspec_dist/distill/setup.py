"""Building a training run: ``setup(cfg) -> Run``.

Contract
--------
``setup`` validates the config, then builds, in order: the process grid (data-parallel only),
the tokenizer, the batch split (distill/budget.py), the data stream (a ``CacheReader`` over
``cache_dir``, or a ``TokenStream`` over ``data`` for sft / online runs without a cache), the
draft's DeepSpeed engine, the frozen online teacher (dense, or sharded over ``target_tp`` ranks)
and reference when this objective needs them, the eval reader, then the job's exclusive claim on
``run_dir`` (``files.claim_for_job``: a second run into the same directory is refused in one line)
and, on the main rank, the resolved config and a tensorboard writer in ``run_dir``. Nothing is
written before every check has passed. It refuses (ValueError, one line) a
cache whose reference column was computed with another divergence, an adaspec run with no L_ref
at all, and a draft whose vocabulary differs from the cache's / tokenizer's, or from the online
target's / reference's (models/vocab.py: head rows, and the tokenizers saved with the models).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adaspec_dist.cache.format import check_divergence, check_manifest_vocab
from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.config import save_resolved
from adaspec_dist.data.tasks import load_examples
from adaspec_dist.data.tokenize import tokenize_examples
from adaspec_dist.data.tokenizer import load_tokenizer, vocab_fingerprint
from adaspec_dist.dist import ParallelState, grid_groups, init_distributed
from adaspec_dist.distill.batches import TokenStream
from adaspec_dist.distill.config import TrainConfig, budget_for, total_steps_for
from adaspec_dist.distill.engine import build_engine
from adaspec_dist.distill.state import DataStream, Run
from adaspec_dist.files import claim_for_job
from adaspec_dist.models.load import ModelConfig, load_causal_lm
from adaspec_dist.models.tp_target import OnlineTPTeacher
from adaspec_dist.models.vocab import check_same_vocab

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def setup(cfg: TrainConfig) -> Run:
    """Every part of the run (see the module contract); collective (every rank calls it)."""
    cfg.validate()
    ps = init_distributed(tp_size=1)
    torch.manual_seed(cfg.seed)
    tokenizer = None
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    budget = budget_for(cfg, ps.dp_size)
    # The engine runs the resolved split: the micro-batch and accumulation this world size gives.
    engine_cfg = dataclasses.replace(cfg.engine, micro_batch_size=budget.micro_batch,
                                     grad_accum=budget.grad_accum, global_batch_size=None)
    stream = _stream(cfg, ps, tokenizer, budget.micro_batch)
    _check_reference_column(cfg, stream)
    if isinstance(stream, CacheReader):  # the cache's width is what the draft is built with: check it
        check_manifest_vocab(stream.manifest, len(tokenizer) if tokenizer is not None else None, cfg.cache_dir)
        if cfg.objective != "sft" and cfg.teacher_mode == "cached":  # a compact sampled cache supports fkl only
            check_divergence(stream.manifest, cfg.divergence, cfg.cache_dir)
    vocab = (stream.manifest or {}).get("vocab_size") or (len(tokenizer) if tokenizer is not None else None)
    draft = load_causal_lm(cfg.draft, vocab_size=vocab, device=ps.device, dtype="float32")
    draft_vocab = int(draft.get_output_embeddings().weight.shape[0])
    if vocab is not None and draft_vocab != int(vocab):
        raise ValueError(f"the draft's vocabulary ({draft_vocab}) differs from the cache/tokenizer's ({vocab}); "
                         "use a draft that shares the target's tokenizer")
    draft.train()
    total = total_steps_for(cfg, budget, len(stream))
    engine = build_engine(draft, cfg=engine_cfg, total_steps=total, device=ps.device)
    need_target = cfg.objective != "sft" and cfg.teacher_mode == "online"
    need_ref = cfg.objective == "adaspec" and (cfg.teacher_mode == "online" or stream_lacks_reference(stream))
    tp_teacher = None
    if need_target and cfg.target_tp > 1:
        assert cfg.target is not None and cfg.target.name_or_path  # validate() checked it
        # Collective: every rank builds it; groups of target_tp ranks share one sharded target.
        teacher_grid = grid_groups(cfg.target_tp, what="target_tp")  # dist.py builds (and caches) the groups
        tp_teacher = OnlineTPTeacher(cfg.target.files, tp_group=teacher_grid.tp_group,
                                     top_k=cfg.target_top_k, device=ps.device, seed=cfg.seed)
        need_target = False
    target = _frozen(cfg.target, vocab, ps.device) if need_target else None
    reference = _frozen(cfg.selection.reference, vocab, ps.device) if need_ref else None
    _check_vocabularies(cfg, draft, target, reference, tokenizer)
    eval_reader = None
    if cfg.eval.cache_dir:
        eval_reader = CacheReader(cfg.eval.cache_dir, batch_size=budget.micro_batch, dp_rank=ps.dp_rank,
                                  dp_size=ps.dp_size, shuffle=False, prefetch=0, vocab_size=vocab)
        for kind in ("tvd", cfg.divergence):  # held-out α = 1 − TVD, and the run's divergence
            check_divergence(eval_reader.manifest, kind, cfg.eval.cache_dir)
    # Everything above only reads and checks; from here the run writes into run_dir, one job at a time.
    claim = claim_for_job(cfg.run_dir, what="run directory",
                          fix="wait for that run to finish or choose another run_dir")
    writer = None
    if ps.is_main:
        from torch.utils.tensorboard import SummaryWriter

        save_resolved(cfg, cfg.run_dir)
        writer = SummaryWriter(str(Path(cfg.run_dir) / "tb"))
    return Run(cfg=cfg, ps=ps, engine=engine, stream=stream, eval_reader=eval_reader, target=target,
               reference=reference, tokenizer=tokenizer, writer=writer, total_steps=total, budget=budget,
               tp_teacher=tp_teacher, claim=claim)


def _check_vocabularies(cfg: TrainConfig, draft: torch.nn.Module, target: torch.nn.Module | None,
                        reference: torch.nn.Module | None, tokenizer: PreTrainedTokenizerBase | None) -> None:
    """The online teacher and reference share the draft's vocabulary (head rows), and every
    tokenizer saved with a model (and the run's) is the same: asked of the models themselves."""
    others = {name: m for name, m in (("the target", target), ("the reference", reference)) if m is not None}
    ref_cfg = cfg.selection.reference
    dirs = {"the draft": cfg.draft.files, "the run's tokenizer": cfg.tokenizer,
            "the target": cfg.target.files if cfg.target is not None and target is not None else None,
            "the reference": ref_cfg.files if ref_cfg is not None and reference is not None else None}
    check_same_vocab(draft, others, reference_name="the draft",
                     tokenizer_len=len(tokenizer) if tokenizer is not None else None, dirs=dirs)


def stream_lacks_reference(stream: DataStream) -> bool:
    return not (getattr(stream, "manifest", None) or {}).get("reference")


def _frozen(cfg: ModelConfig | None, vocab: int | None, device: Any) -> torch.nn.Module:
    assert cfg is not None  # validate() / _check_reference_column made sure it is set
    model = load_causal_lm(cfg, vocab_size=vocab, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _stream(cfg: TrainConfig, ps: ParallelState, tokenizer: PreTrainedTokenizerBase | None, mb: int) -> DataStream:
    """The training batches (``mb`` sequences per rank): the cache when there is one, else
    tokenized task data."""
    if cfg.cache_dir:
        fingerprint = None
        if tokenizer is not None:  # refuse a cache built with another tokenizer
            fingerprint = vocab_fingerprint(tokenizer)
        return CacheReader(cfg.cache_dir, batch_size=mb, dp_rank=ps.dp_rank, dp_size=ps.dp_size, seed=cfg.seed,
                           tokenizer_fingerprint=fingerprint)

    if tokenizer is None:
        raise ValueError("training from data needs a tokenizer: set tokenizer: PATH")
    assert cfg.data is not None  # validate(): no cache_dir means data is set
    examples = tokenize_examples(load_examples(cfg.data, tokenizer=tokenizer), tokenizer, max_length=cfg.data.max_length)
    return TokenStream(examples, batch_size=mb, dp_rank=ps.dp_rank, dp_size=ps.dp_size, seed=cfg.seed)


def _check_reference_column(cfg: TrainConfig, stream: DataStream) -> None:
    ref = (getattr(stream, "manifest", None) or {}).get("reference")
    if cfg.objective != "adaspec" or cfg.teacher_mode != "cached":
        return
    if ref:
        if ref.get("divergence") != cfg.divergence or (cfg.divergence == "jsd" and ref.get("beta") != cfg.beta):
            raise ValueError(f"the cache's reference column used divergence={ref.get('divergence')} "
                             f"(beta={ref.get('beta')}) but this run uses {cfg.divergence}; set divergence to match "
                             "or recompute it with `adaspec-dist cache --add-reference`")
    elif cfg.selection.reference is None:
        raise ValueError("adaspec needs L_ref: the cache has no reference column, so set "
                         "selection.reference.name_or_path "
                         "(or run `adaspec-dist cache --add-reference`)")
