"""The project's sbatch script on a real 2-node Slurm (munge, slurmctld, slurmd node1 + node2).

* ``sbatch --wait launchers/slurm/train.sbatch``: one task per node starts
  ``deepspeed --no_ssh --node_rank $SLURM_NODEID``; the job completes, both node ranks ran,
  and the checkpoint equals the plain one-node 2-rank DeepSpeed run.
* Preemption: the running job gets ``scontrol requeue`` — Slurm's preemption path: SIGTERM to
  every process, SIGKILL after KillWait, job back in the queue. The ranks must checkpoint at a
  step boundary, the job must rerun with ``--resume`` and finish with the same parameters as
  the uninterrupted run.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.launch import infra
from tests.launch.common import (LAUNCHERS, MAX_STEPS, REPO, assert_same_params, checkpoint_params,
                                   node_ranks_seen)

pytestmark = [pytest.mark.launch, pytest.mark.distributed]

TRAIN_SBATCH = LAUNCHERS / "slurm" / "train.sbatch"


@pytest.fixture(scope="module")
def slurm(launch_root, launch_env):
    with infra.slurm_cluster(launch_root / "slurm", launch_env) as cluster:
        yield cluster


def submit(slurm: infra.Slurm, recipe: Path, log: Path, *extra: str) -> str:
    # --chdir: the scripts find the repository through the submit dir, as a user's job would.
    out = slurm.run("sbatch", "--parsable", f"--output={log}", f"--chdir={REPO}", *extra,
                    str(TRAIN_SBATCH), "--config", str(recipe)).stdout
    return out.strip().split(";")[0]


def wait_state(slurm: infra.Slurm, job: str, states: set[str], timeout: float) -> dict:
    info = infra.wait_for(lambda: (i := slurm.job_info(job)).get("JobState") in states and i, timeout,
                          f"job {job} to reach {states}", poll=1)
    return info


@pytest.mark.parametrize("mode", ["deepspeed", "srun"])
def test_sbatch_train_two_nodes(mode, slurm, make_recipe, baseline):
    """deepspeed: one task per node running `deepspeed --no_ssh --node_rank $SLURM_NODEID`;
    srun: one task per rank, no launcher — adaspec_dist.dist reads SLURM_PROCID/SLURM_NTASKS."""
    recipe, run_dir = make_recipe(f"slurm_train_{mode}")
    log = run_dir.parent / "job.log"
    slurm.run("sbatch", "--wait", f"--output={log}", f"--chdir={REPO}", f"--export=ALL,ADASPEC_LAUNCHER={mode}",
              str(TRAIN_SBATCH), "--config", str(recipe), timeout=500)
    out = log.read_text(errors="replace")
    job = re.search(r"adaspec-dist sbatch: job (\d+)", out).group(1)
    info = slurm.job_info(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    assert info["NumNodes"] == "2" and info["NodeList"] == "node[1-2]", info
    if mode == "deepspeed":
        assert node_ranks_seen(out) == {0, 1}, out[-3000:]
    else:
        assert {int(r) for r in re.findall(r"initialised gloo rank (\d)/2 \(from slurm launcher env\)", out)} == {0, 1}
    assert_same_params(checkpoint_params(run_dir), baseline)


def test_sbatch_preempted_requeues_and_resumes(slurm, make_recipe, baseline):
    recipe, run_dir = make_recipe("slurm_preempt")
    log = run_dir.parent / "job.log"
    job = submit(slurm, recipe, log)

    def progress() -> int:
        text = log.read_text(errors="replace") if log.exists() else ""
        done = [int(n) for n in re.findall(rf"(\d+)/{MAX_STEPS} \[", text)]
        return max(done, default=0)

    # Preempt early in the run (well before MAX_STEPS), once the loop is stepping.
    infra.wait_for(lambda: progress() >= 1, 300, "training to make progress", poll=0.05)
    slurm.run("scontrol", "requeue", job)
    # Slurm holds a requeued job for a while (BeginTime); let it start right away.
    infra.wait_for(lambda: slurm.job_info(job).get("JobState") == "PENDING" or None, 120,
                   "the job to be requeued", poll=0.5)
    slurm.start_now(job)
    info = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 400)
    out = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, out[-4000:])

    stopped = [int(s) for s in re.findall(r"stopped by signal after step (\d+)", out)]
    resumed = [int(s) for s in re.findall(r"resumed at step (\d+)", out)]
    assert stopped and 0 < stopped[0] < MAX_STEPS, out[-4000:]
    assert resumed and resumed[0] == stopped[0], (stopped, resumed)
    # The first run's stop checkpoint (checkpoint.every=0: only a signal can have written it).
    assert (run_dir / "checkpoints" / f"step{stopped[0]:08d}").is_dir()
    assert "train --auto-resume --config" in out  # the rerun was told to resume
    assert_same_params(checkpoint_params(run_dir), baseline)


def test_pipeline_chain_submits_afterok_dependencies(slurm, launch_env):
    """launchers/slurm/pipeline.sh submits one job per planned stage, each afterok on the previous.

    Submitted held (``--sbatch --hold``) and cancelled afterwards: this checks the chain Slurm
    recorded, not the stages themselves (those run in the tests above and in the pipeline tests).
    """
    proc = slurm.run("bash", str(LAUNCHERS / "slurm" / "pipeline.sh"), "--sbatch", "--hold",
                     str(REPO / "configs" / "demo.yaml"), timeout=120)
    chain = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    try:
        from adaspec_dist.pipeline import load_pipeline_config, plan

        expected = [s.name for s in plan(load_pipeline_config(REPO / "configs" / "demo.yaml"))]
        assert [stage for stage, _ in chain] == expected
        for i, (stage, job) in enumerate(chain):
            info = slurm.job_info(job)
            assert info["JobName"] == f"adaspec-{stage}"
            assert info["JobState"] == "PENDING" and info["Requeue"] == "1", info
            dependency = info["Dependency"]  # e.g. "afterok:12(unfulfilled)"
            if i == 0:
                assert dependency == "(null)", info
            else:
                assert dependency.startswith(f"afterok:{chain[i - 1][1]}"), info
    finally:
        slurm.run("scancel", *[job for _, job in chain], check=False)


def test_sbatch_cache_two_nodes_equals_one_process(slurm, launch_root, tokenizer_dir):
    """launchers/slurm/cache.sbatch on 2 nodes writes the same cache, byte for byte, as one process."""
    import yaml

    from adaspec_dist.cache.produce import CacheConfig, prepare_job, write_cache
    from adaspec_dist.config import load_config
    from adaspec_dist.data.tokenizer import load_tokenizer
    from adaspec_dist.models.load import build_preset, save_hf

    root = launch_root / "slurm_cache"
    tok = load_tokenizer(str(tokenizer_dir))
    save_hf(build_preset("tiny-llama", len(tok), seed=0), root / "target", tokenizer=tok)
    recipe = root / "cache.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"task": "arith", "limit": 16, "max_length": 48}, "model": {"name_or_path": str(root / "target")},
        "scheme": "topk", "top_k": 8, "batch_size": 2, "shard_size": 2, "seed": 0}))

    one = root / "one"
    write_cache(*prepare_job(load_config(CacheConfig, recipe, [f"out_dir={one}"])), one)
    two, log = root / "two", root / "job.log"
    slurm.run("sbatch", "--wait", f"--output={log}", f"--chdir={REPO}", str(LAUNCHERS / "slurm" / "cache.sbatch"),
              "--config", str(recipe), f"out_dir={two}", timeout=400)
    out = log.read_text(errors="replace")
    job = re.search(r"adaspec-dist sbatch: job (\d+)", out).group(1)
    info = slurm.job_info(job)
    assert info["JobState"] == "COMPLETED" and info["NumNodes"] == "2", (info, out[-3000:])
    assert node_ranks_seen(out) == {0, 1}, out[-3000:]

    def content(d: Path) -> dict[str, bytes]:
        files = sorted((d / "shards").iterdir()) + [d / "manifest.json"]
        return {str(p.relative_to(d)): p.read_bytes() for p in files}

    want = content(one)
    assert len([k for k in want if k.endswith(".safetensors")]) == 8  # 16 sequences / shard_size 2
    assert content(two) == want
