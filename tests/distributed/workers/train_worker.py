"""2-rank worker for the DeepSpeed training tests. argv: MODE OUT_DIR CACHES_JSON.

MODE "main": ZeRO-1/2/3 short kd runs (eval before/after; the ZeRO-3 export is probed for logits),
the cached-vs-online adaspec pair, sft; then a 6-step adaspec run (ZeRO-2, global selection,
grad accumulation) that kills its own process right after its step-3 checkpoint.
MODE "resume": resumes that run to step 6, then runs the same recipe uninterrupted.
"""
import json
import sys
from pathlib import Path

import torch

from adaspec_dist.config import build_config
from adaspec_dist.dist import init_distributed
from adaspec_dist.distill.engine import gathered_module
from adaspec_dist.distill.train import Run, TrainCallback, TrainConfig, train
from tests.distributed.train_setup import recipe
from tests.helpers_kill import KillAfter

mode, out = sys.argv[1], Path(sys.argv[2])
caches = json.loads(Path(sys.argv[3]).read_text())
ps = init_distributed(tp_size=1)
results = {}


class KeepRun(TrainCallback):
    """Holds the finished run, to inspect its engine afterwards."""

    run: Run

    def after_train(self, run: Run) -> None:
        self.run = run


RESUME_RUN = dict(objective="adaspec", selection={"scope": "global"}, max_steps=6, checkpoint={"every": 3},
                  eval={"cache_dir": None},
                  engine={"zero_stage": 2, "grad_accum": 2, "micro_batch_size": 2})


if mode == "main":
    for stage in (1, 2, 3):
        # ZeRO-2 also exercises the activation-checkpointing switch (recomputation: same numbers).
        engine = {"zero_stage": stage, "activation_checkpointing": stage == 2}
        if stage == 3:  # 24 sequences in batches of 5 x 2 ranks: rank 1's last batch is EMPTY (B = 0)
            engine["micro_batch_size"] = 5
        kept = KeepRun()
        s = train(build_config(TrainConfig, recipe(caches, out / f"kd{stage}", objective="kd", max_steps=5,
                                                   export=stage == 3, engine=engine)), callbacks=[kept])
        r = kept.run
        results[f"kd{stage}"] = {"eval_start": s["eval_start"], "eval_end": s["eval_end"], "steps": s["steps"],
                                 "stage": r.engine.zero_optimization_stage(),
                                 "checkpointing": bool(r.engine.module.is_gradient_checkpointing)}
        if stage == 3:  # probe logits of the live ZeRO-3 module against its export
            probe = torch.arange(2, 30).reshape(2, 14) % 640
            with gathered_module(r.engine) as module, torch.no_grad():
                module.eval()
                logits = module(input_ids=probe).logits
            if ps.is_main:
                torch.save({"probe": probe, "logits": logits}, out / "kd3_probe.pt")
    # The same first adaspec step three ways: cached sparse targets, a dense online target, and the
    # target sharded over both ranks (TP=2, megatron-core) as the online teacher of a DP student.
    tp2 = {"teacher_mode": "online", "target": {"name_or_path": caches["target_dir"], "preset": None}, "target_tp": 2,
           "target_top_k": 640}
    for mode_name, extra in (("cached", {}), ("online", {"teacher_mode": "online"}), ("online_tp2", tp2)):
        s = train(build_config(TrainConfig, recipe(caches, out / f"ada_{mode_name}", max_steps=1, export=False,
                                                   eval={"cache_dir": None}, **extra)))
        results[f"ada_{mode_name}"] = {"loss": s["last_loss"], "trained": s["trained_tokens"]}
    s = train(build_config(TrainConfig, recipe(caches, out / "sft", objective="sft", cache_dir=None, max_steps=2,
                                               eval={"cache_dir": None}, export=False,
                                               data={"task": "arith", "limit": 12, "max_length": 48})))
    results["sft"] = {"steps": s["steps"], "loss": s["last_loss"]}
    with open(out / f"{mode}_rank{ps.rank}.json", "w") as fh:
        json.dump(results, fh, default=str)
    # Last: the run that is "killed" (exits the process) right after its step-3 checkpoint.
    train(build_config(TrainConfig, recipe(caches, out / "resumed", **RESUME_RUN)), callbacks=[KillAfter(3)])
    raise SystemExit("KillAfter(3) did not stop the run")
elif mode == "resume":
    s = train(build_config(TrainConfig, recipe(caches, out / "resumed", **RESUME_RUN)), resume=True)
    results["resumed"] = {"steps": s["steps"], "passes": s["passes"]}
    s = train(build_config(TrainConfig, recipe(caches, out / "full", **RESUME_RUN)))
    results["full"] = {"steps": s["steps"], "passes": s["passes"], "kept": s["kept_token_epochs"]}
with open(out / f"{mode}_rank{ps.rank}.json", "w") as fh:
    json.dump(results, fh, default=str)
