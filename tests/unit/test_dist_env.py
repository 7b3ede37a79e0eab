"""dist.py reads every launcher's environment correctly."""
import pytest

from adaspec_dist.dist import first_slurm_host, grid_position, launch_env


def test_torchrun_env():
    env = launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h0",
                      "MASTER_PORT": "1234", "GROUP_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.node_rank) == (3, 8, 1, 1)
    assert (env.master_addr, env.master_port, env.source) == ("h0", 1234, "torch")


def test_faked_slurm_env():
    env = launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
                      "SLURM_JOB_NODELIST": "gpu[07-10,12]", "SLURM_JOB_ID": "4242"})
    assert (env.rank, env.world_size, env.local_rank, env.node_rank) == (5, 8, 1, 2)
    assert env.master_addr == "gpu07" and env.source == "slurm"
    assert env.master_port == 20000 + 4242 % 20000


def test_slurm_step_nodelist_and_explicit_master_win():
    env = launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a[1-4]",
                      "SLURM_STEP_NODELIST": "a[3-4]", "MASTER_PORT": "999"})
    assert env.master_addr == "a3" and env.master_port == 999


def test_torch_vars_take_precedence_over_slurm():
    # torchrun / deepspeed started inside an sbatch allocation: its own RANK wins.
    env = launch_env({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert env.rank == 1 and env.source == "torch"


def test_single_process():
    env = launch_env({})
    assert (env.rank, env.world_size, env.source) == (0, 1, "single") and env.master_port > 0


@pytest.mark.parametrize("nodelist,first", [("node1", "node1"), ("node1,node2", "node1"),
                                            ("n[2-3]", "n2"), ("x[01,05-07],y1", "x01")])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_grid_layout_contiguous_tp():
    assert [grid_position(r, 2) for r in range(4)] == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_keep_process_group_defers_shutdown(tmp_path):
    """Chained stages: inner shutdown() calls are no-ops until the outermost block ends."""
    import torch.distributed as dist

    from adaspec_dist.dist import init_distributed, keep_process_group, shutdown

    with keep_process_group():
        init_distributed()
        with keep_process_group():
            shutdown()
        shutdown()
        assert dist.is_initialized()
    assert not dist.is_initialized()
