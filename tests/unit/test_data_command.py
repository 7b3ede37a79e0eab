"""``adaspec-dist data``: the real console entry point on local files and embedded tasks."""
from __future__ import annotations

import json
import re

from adaspec_dist import cli
from adaspec_dist.data.tasks import DataConfig, load_examples
from adaspec_dist.data.tokenize import data_fingerprint, tokenize_examples
from tests.fixtures import spm_tokenizer, spm_tokenizer_dir  # noqa: F401  (pytest fixtures)

ROWS = [{"question": f"Tom has {n} pens and buys {n + 1} more. How many pens does he have?",
         "answer": f"Tom has {n} + {n + 1} = <<{n}+{n + 1}={2 * n + 1}>>{2 * n + 1} pens.\n#### {2 * n + 1}"}
        for n in range(1, 6)]


def test_data_command_prints_examples_and_matching_fingerprint(tmp_path, spm_tokenizer, spm_tokenizer_dir,
                                                                capsys):
    # In-process through cli.main (the console script's function): a subprocess would spend its
    # time importing transformers, and the CLI's process wiring is tested with the CLI table.
    src = tmp_path / "gsm.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rc = cli.main(["data", "--task", "gsm8k", "--source", str(src), "--split", "train", "--limit", "3",
                   "--tokenizer", str(spm_tokenizer_dir), "--max-length", "64"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("===== example") == 3
    assert "Tom has 1 pens" in out and "The final answer is:  3" in out and "####" not in out
    assert "===== 3 gsm8k examples (train) =====" in out
    assert re.search(r"prompt tokens\s+mean", out) and re.search(r"supervised\s+mean", out)
    # The printed fingerprint is the one training would compute for the same data and tokenizer.
    cfg = DataConfig(task="gsm8k", source=str(src), limit=3)
    expected = data_fingerprint(tokenize_examples(load_examples(cfg), spm_tokenizer, max_length=64))
    assert f"data fingerprint {expected}" in out


def test_data_command_embedded_and_user_error(tmp_path, capsys):
    assert cli.main(["data", "--task", "arith", "--split", "test", "--limit", "4", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("===== example") == 1 and "===== 4 arith examples (test) =====" in out
    assert "pass --tokenizer" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    assert cli.main(["data", "--task", "gsm8k", "--source", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any `datasets` progress bars
    assert err.startswith("adaspec-dist data: error:") and "lacks column 'answer'" in err and str(bad) in err
