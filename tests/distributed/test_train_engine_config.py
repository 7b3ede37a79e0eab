"""Engine config (pure, no process group): DeepSpeed JSON + recipe overrides, LR schedules, errors."""
from __future__ import annotations

import math

import pytest

from adaspec_dist.config import build_config
from adaspec_dist.distill.engine import EngineConfig, ds_config, lr_lambda


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_json_files_and_overrides(stage):
    cfg = EngineConfig(ds_config=f"ds_zero{stage}.json", micro_batch_size=3, grad_accum=4, grad_clip=0.5)
    conf = ds_config(cfg, dp_size=2, device="cpu")
    assert conf["zero_optimization"]["stage"] == stage
    assert conf["train_batch_size"] == 3 * 4 * 2 and conf["gradient_accumulation_steps"] == 4
    assert conf["gradient_clipping"] == 0.5
    assert not conf["bf16"]["enabled"] and not conf["fp16"]["enabled"]  # fp32 on CPU
    assert ds_config(EngineConfig(ds_config=f"ds_zero{stage}.json", zero_stage=2), dp_size=1)[
        "zero_optimization"]["stage"] == 2


def test_cosine_with_warmup_and_constant():
    f = lr_lambda(EngineConfig(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1), total_steps=14)
    assert [round(f(s), 6) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    g = lr_lambda(EngineConfig(schedule="constant", warmup_steps=2), total_steps=10)
    assert [g(s) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("data,needle", [({"zero_stage": 5}, "zero_stage"), ({"schedule": "linear"}, "schedule"),
                                         ({"precision": "fp8"}, "precision"), ({"ds_config": "nope.json"}, None)])
def test_bad_engine_settings(data, needle):
    if needle is None:
        with pytest.raises(ValueError, match="DeepSpeed config 'nope.json' not found"):
            ds_config(build_config(EngineConfig, data), dp_size=1)
        return
    with pytest.raises(ValueError, match=needle):
        build_config(EngineConfig, data)


def test_half_precision_needs_a_gpu():
    with pytest.raises(ValueError, match="needs a GPU"):
        ds_config(EngineConfig(precision="bf16"), dp_size=1, device="cpu")
