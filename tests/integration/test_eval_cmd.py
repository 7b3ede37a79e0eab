"""`adaspec-dist eval` end to end: saved HF models in, table + JSON + PNG + tensorboard out."""
import json

import torch

from adaspec_dist.models.load import build_preset, save_hf
from tests.fixtures import TINY_VOCAB, spm_tokenizer_dir  # noqa: F401  (pytest fixture)
from tests.helpers import run_cli


def _models(tmp_path, vocab, tokenizer=None):
    target = build_preset("tiny-llama", vocab, seed=0, initializer_range=0.2)
    noisy = build_preset("tiny-llama", vocab, seed=0, initializer_range=0.2)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in noisy.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=gen))
    save_hf(target, tmp_path / "target", tokenizer)
    save_hf(noisy, tmp_path / "noisy", tokenizer)
    return tmp_path / "target", tmp_path / "noisy"


def _check_outputs(out, stdout, names, gammas):
    result = json.loads((out / "eval.json").read_text())
    for name in names:
        assert f"draft {name}: alpha_logits" in stdout
        assert list(result["drafts"][name]["by_gamma"]) == [str(g) for g in gammas]
    assert "conventions: alpha_logits" in stdout and "tau" in stdout
    for png in ("per_position_acceptance.png", "tau_vs_gamma.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    assert (out / "config.yaml").exists()
    return result


def test_eval_synthetic_prompts(tmp_path, capsys):
    """In-process through cli.main (the task-split test below runs the console script)."""
    from adaspec_dist.cli import main

    target, noisy = _models(tmp_path, 48)
    out = tmp_path / "eval"
    assert main(["eval", f"target.name_or_path={target}", f"drafts.self={target}", f"drafts.noisy={noisy}",
                 "gammas=[1,3]", "num_prompts=6", "batch_size=3", "max_new_tokens=10", f"out_dir={out}"]) == 0
    result = _check_outputs(out, capsys.readouterr().out, ["self", "noisy"], [1, 3])
    same, other = result["drafts"]["self"], result["drafts"]["noisy"]
    assert abs(same["alpha_logits"] - 1.0) < 1e-6           # a model against itself
    assert same["by_gamma"]["3"]["acceptance_rate"] > 0.95   # (float noise may flip a near-tie)
    assert other["alpha_logits"] < 1.0
    for row in (*same["by_gamma"].values(), *other["by_gamma"].values()):
        assert row["matches_target"] >= 5 / 6                # greedy SD == target-only output


def test_eval_on_a_task_split(tmp_path, spm_tokenizer_dir, capsys):  # noqa: F811
    from adaspec_dist.data.tokenizer import load_tokenizer

    target, noisy = _models(tmp_path, TINY_VOCAB, load_tokenizer(spm_tokenizer_dir))
    out = tmp_path / "eval"
    proc = run_cli(["eval", f"target.name_or_path={target}", f"drafts.noisy={noisy}", "data.task=arith",
                    "data.split=test", "data.max_length=64", "gammas=[2]", "num_prompts=4", "batch_size=4",
                    "max_new_tokens=6", "temperature=1.0", f"out_dir={out}"], timeout=240)
    result = _check_outputs(out, proc.stdout, ["noisy"], [2])
    assert result["drafts"]["noisy"]["alpha_positions"] > 0

    # a draft saved with another tokenizer (one extra token) is refused with one line
    import shutil

    from adaspec_dist.cli import main

    other = load_tokenizer(spm_tokenizer_dir)
    other.add_tokens(["<extra>"])
    shutil.copytree(noisy, tmp_path / "foreign")
    other.save_pretrained(tmp_path / "foreign")
    assert main(["eval", f"target.name_or_path={target}", f"drafts.foreign={tmp_path / 'foreign'}",
                 "data.task=arith", "data.split=test", "num_prompts=2", f"out_dir={tmp_path / 'e2'}"]) == 2
    assert "different tokenizer" in capsys.readouterr().err


def test_eval_user_errors_are_one_line(capsys):
    from adaspec_dist.cli import main

    assert main(["eval", "target.name_or_path=/x", "drafts.x=/y", "gamas=[1]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'gamas'" in err and "gammas" in err and "\n" not in err
    assert main(["eval", "target.name_or_path=/x"]) == 2
    assert "at least one draft" in capsys.readouterr().err


def test_eval_tp_refusals_are_one_line(capsys):
    """tp > 1 (the megatron-core target; run in tests/distributed/test_tp_model.py) refuses what it cannot shard."""
    from adaspec_dist.cli import main

    assert main(["eval", "--tp", "2", "target.name_or_path=/x", "drafts.x=/y", "top_p=0.9"]) == 2
    assert "top_p < 1 is not supported with a tensor-parallel target" in capsys.readouterr().err
    assert main(["eval", "--tp", "2", "target.preset=tiny-llama", "drafts.x=/y"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tp > 1 needs target.name_or_path" in err and "\n" not in err


def _error_line(capsys) -> str:
    """The one error line on stderr (model loading writes progress bars there too)."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_inputs_past_the_models_positions_are_refused_naming_the_keys(tmp_path, spm_tokenizer_dir, capsys):  # noqa: F811
    """tiny-llama has max_position_embeddings 256: a prompt (+ max_new_tokens + γ) or a held-out
    sequence past it is refused in one line naming what to lower, before anything is decoded."""
    from adaspec_dist.cli import main
    from adaspec_dist.data.tokenizer import load_tokenizer

    target, noisy = _models(tmp_path, TINY_VOCAB, load_tokenizer(spm_tokenizer_dir))
    common = ["eval", f"target.name_or_path={target}", f"drafts.noisy={noisy}", "gammas=[1,2]", "batch_size=4",
              f"out_dir={tmp_path / 'eval'}"]
    # stdlib_code's second test prompt has 353 tokens with this tokenizer; 300 of them are kept.
    code = main([*common, "data.task=stdlib_code", "data.split=test", "num_prompts=2", "max_prompt_tokens=300",
                 "data.max_length=200", "max_new_tokens=16"])
    err = _error_line(capsys)
    assert code == 2, err
    assert "the longest prompt has 300 tokens" in err and "max_position_embeddings (256)" in err
    assert "lower max_prompt_tokens (to 239 or less), max_new_tokens or gammas" in err
    # Held-out sequences (α_logits) longer than the positions: data.max_length names the fix.
    code = main([*common, "data.task=stdlib_code", "data.split=test", "num_prompts=2", "max_prompt_tokens=64",
                 "data.max_length=400", "max_new_tokens=16"])
    err = _error_line(capsys)
    assert code == 2 and "held-out sequence has" in err and "set data.max_length <= 256" in err, err
    # Synthetic prompts: max_new_tokens alone can run past the limit.
    code = main(["eval", f"target.name_or_path={target}", f"drafts.noisy={noisy}", "gammas=[4]",
                 "max_new_tokens=250", f"out_dir={tmp_path / 'eval2'}"])
    err = _error_line(capsys)
    assert code == 2 and "past the target's max_position_embeddings (256)" in err, err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "eval2").exists()
