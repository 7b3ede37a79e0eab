"""Tasks from local files in the real column layouts -> examples -> masked token ids."""
from __future__ import annotations

import json

import pytest

from adaspec_dist.config import ConfigError, build_config
from adaspec_dist.data.tasks import DataConfig, Example, load_examples, task_names
from adaspec_dist.data.tokenize import IGNORE, tokenize_examples
from tests.fixtures import spm_tokenizer, spm_tokenizer_dir  # noqa: F401  (pytest fixtures)

# Rows in each dataset's real column layout (including columns the task ignores).
ROWS = {
    "gsm8k": [
        {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                     "May. How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"},
        {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                     "How much did she earn?",
         "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
                   "$<<0.2*50=10>>10.\n#### 10"},
    ],
    "alpaca": [
        {"instruction": "Give three tips for staying healthy.", "input": "",
         "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep.", "text": "ignored"},
        {"instruction": "Classify the sentiment of the sentence.", "input": "I love this phone!",
         "output": "Positive", "text": "ignored"},
    ],
    "mbpp": [
        {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
         "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
                 "  return (res) ",
         "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                       "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))"],
         "test_setup_code": "", "challenge_test_list": []},
    ],
    "cnn_dailymail": [
        {"article": "LONDON, England (Reuters) -- Harry Potter star Daniel Radcliffe gains access to a reported "
                    "20 million fortune as he turns 18 on Monday, but he insists the money won't cast a spell "
                    "on him.", "highlights": "Harry Potter star Daniel Radcliffe gets 20M fortune as he turns 18.",
         "id": "42c027e4ff9730fbb3de84c1af0d2c506e41c3e4"},
    ],
    "xsum": [
        {"document": "The full cost of damage in Newton Stewart, one of the areas worst affected, is still being "
                     "assessed.\nRepair work is ongoing in Hawick and many roads in Peeblesshire remain badly "
                     "affected by standing water.",
         "summary": "Clean-up operations are continuing across the Scottish Borders after flooding.",
         "id": "35232142"},
    ],
}
ANSWER_COLUMN = {"gsm8k": "answer", "alpaca": "output", "mbpp": "code", "cnn_dailymail": "highlights",
                 "xsum": "summary"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("task", sorted(ROWS))
def test_local_jsonl_to_masked_tokens(task, tmp_path, spm_tokenizer):
    src = write_jsonl(tmp_path / "train.jsonl", ROWS[task])
    examples = load_examples(DataConfig(task=task, source=str(src)))
    assert len(examples) == len(ROWS[task])
    tok = spm_tokenizer
    tokenized = tokenize_examples(examples, tok, max_length=4096)
    for ex, row, seq in zip(examples, ROWS[task], tokenized):
        assert isinstance(ex, Example) and ex.prompt and ex.answer
        # The prompt's trailing spaces are tokenized with the answer (see tokenize.py).
        head = ex.prompt.rstrip(" ")
        n_prompt = 1 + len(tok(head, add_special_tokens=False).input_ids)  # BOS + prompt
        assert seq.input_ids[0] == tok.bos_token_id and seq.input_ids[-1] == tok.eos_token_id
        assert all(label == IGNORE for label in seq.labels[:n_prompt])
        assert seq.labels[n_prompt:] == seq.input_ids[n_prompt:]
        assert all(label != IGNORE for label in seq.labels[n_prompt:])
        # The boundary is exact: the masked part decodes to the prompt, the supervised part to the answer.
        assert tok.decode(seq.input_ids[1:n_prompt]) == head
        assert tok.decode(seq.labels[n_prompt:-1]) == ex.prompt[len(head):] + ex.answer
        assert tok.decode(seq.input_ids[1:-1]) == ex.prompt + ex.answer
        # The answer comes from the task's answer column (modulo the gsm8k/mbpp normalisation below).
        first_words = str(row[ANSWER_COLUMN[task]]).split()[:2]
        assert ex.answer.split()[:2] == first_words


def test_gsm8k_final_answer_rewrite(tmp_path):
    src = write_jsonl(tmp_path / "g.jsonl", ROWS["gsm8k"])
    a, b = load_examples(DataConfig(task="gsm8k", source=str(src)))
    # The published code's format: "####" -> "The final answer is: " (plain replace: two spaces).
    assert "####" not in a.answer and a.answer.endswith("altogether in April and May.\nThe final answer is:  72")
    assert b.answer.endswith("The final answer is:  10")
    assert a.prompt.startswith("Natalia") and a.prompt.endswith(
        "\nAnswer the above question. First think step by step and then answer the final number.\n")


def test_alpaca_template_with_and_without_input(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", ROWS["alpaca"])
    no_input, with_input = load_examples(DataConfig(task="alpaca", source=str(src)))
    assert "### Input:" not in no_input.prompt and no_input.prompt.endswith("### Response:\n")
    assert "paired with an input" in with_input.prompt
    assert "### Input:\nI love this phone!\n\n### Response:\n" in with_input.prompt


def test_mbpp_tests_in_prompt_and_code_normalised(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", ROWS["mbpp"])
    (ex,) = load_examples(DataConfig(task="mbpp", source=str(src)))
    for test in ROWS["mbpp"][0]["test_list"]:
        assert test in ex.prompt
    assert "\r" not in ex.answer and ex.answer.startswith("def similar_elements(")


def test_directory_source_picks_split_and_parquet(tmp_path):
    import datasets

    write_jsonl(tmp_path / "train.jsonl", ROWS["xsum"])
    datasets.Dataset.from_list(ROWS["xsum"] * 3).to_parquet(str(tmp_path / "test.parquet"))
    assert len(load_examples(DataConfig(task="xsum", source=str(tmp_path)))) == 1
    assert len(load_examples(DataConfig(task="xsum", source=str(tmp_path)), split="test")) == 3
    assert len(load_examples(DataConfig(task="xsum", source=str(tmp_path), split="test", limit=2))) == 2
    with pytest.raises(ValueError, match=r"no validation\.jsonl.*found: test\.parquet, train\.jsonl"):
        load_examples(DataConfig(task="xsum", source=str(tmp_path), split="validation"))


def test_hub_snapshot_layout_with_shards(tmp_path):
    import datasets

    # What `huggingface-cli download openai/gsm8k --repo-type dataset` leaves: main/{split}-0000N-of-0000M.parquet
    (tmp_path / "main").mkdir()
    datasets.Dataset.from_list(ROWS["gsm8k"][:1]).to_parquet(str(tmp_path / "main" / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_list(ROWS["gsm8k"][1:]).to_parquet(str(tmp_path / "main" / "train-00001-of-00002.parquet"))
    datasets.Dataset.from_list(ROWS["gsm8k"] * 2).to_parquet(str(tmp_path / "main" / "test-00000-of-00001.parquet"))
    train = load_examples(DataConfig(task="gsm8k", source=str(tmp_path)))
    assert [e.answer[-2:] for e in train] == ["72", "10"]  # shards in order
    assert len(load_examples(DataConfig(task="gsm8k", source=str(tmp_path), split="test"))) == 4


def test_missing_column_names_file_column_and_expected(tmp_path):
    rows = [{"question": r["question"], "solution": r["answer"]} for r in ROWS["gsm8k"]]
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        load_examples(DataConfig(task="gsm8k", source=str(src)))
    msg = str(err.value)
    assert "\n" not in msg
    assert str(src) in msg and "'answer'" in msg and "expected columns: question, answer" in msg


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data task 'gsm9k'"):
        DataConfig(task="gsm9k").validate()
    with pytest.raises(ValueError, match="embedded"):
        DataConfig(task="arith", source="x.jsonl").validate()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(DataConfig(task="gsm8k", source=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="dataset 'nobody/no-such-dataset' is not a local path.*data.source"):
        load_examples(DataConfig(task="xsum", source="nobody/no-such-dataset"))  # tests run with HF_HUB_OFFLINE=1
    with pytest.raises(ConfigError, match="did you mean: split"):
        build_config(DataConfig, {"task": "arith", "splitt": "test"})
    assert build_config(DataConfig, {"task": "arith", "limit": 4}).limit == 4


def test_embedded_tasks_through_load_examples():
    for task in ("arith", "pydoc", "stdlib_code"):
        train = load_examples(DataConfig(task=task, limit=5, seed=1))
        test = load_examples(DataConfig(task=task, limit=5, seed=1), split="validation")
        assert len(train) == len(test) == 5
        assert not {e.prompt for e in train} & {e.prompt for e in test}


# ----------------------------------------------------------------------------- your own data (issue 15)

def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_a_column_mapping_reads_a_file_whose_columns_differ(tmp_path):
    rows = [{"problem": r["question"], "solution": r["answer"], "id": i} for i, r in enumerate(ROWS["gsm8k"])]
    src = _jsonl(tmp_path / "mine.jsonl", rows)
    mapped = load_examples(DataConfig(task="gsm8k", source=src, columns={"question": "problem", "answer": "solution"}))
    _jsonl(tmp_path / "std.jsonl", ROWS["gsm8k"])
    assert mapped == load_examples(DataConfig(task="gsm8k", source=str(tmp_path / "std.jsonl")))
    with pytest.raises(ValueError, match=r"lacks column 'question'.*data.columns"):  # the fix is named
        load_examples(DataConfig(task="gsm8k", source=src))
    with pytest.raises(ValueError, match=r"data.columns maps to column 'query'.*found: problem"):
        load_examples(DataConfig(task="gsm8k", source=src, columns={"question": "query", "answer": "solution"}))


def test_a_custom_template_formats_any_columns(tmp_path):
    src = _jsonl(tmp_path / "qa.jsonl", [{"q": "2+2?", "a": " 4 ", "lang": "en"}, {"q": "3+1?", "a": "4", "lang": "fr"}])
    got = load_examples(DataConfig(task="custom", source=src, prompt_template="[{lang}] Q: {q}\nA: ",
                                   answer_template="{a}"))
    assert got == [Example("[en] Q: 2+2?\nA: ", "4"), Example("[fr] Q: 3+1?\nA: ", "4")]
    with pytest.raises(ValueError, match="lacks column 'lang2'"):
        load_examples(DataConfig(task="custom", source=src, prompt_template="{lang2} {q}", answer_template="{a}"))
    for bad in (dict(task="custom", source=src), dict(task="custom", prompt_template="{q}", answer_template="{a}"),
                dict(task="gsm8k", source=src, prompt_template="{q}")):
        with pytest.raises(ValueError, match="prompt_template"):
            DataConfig(**bad).validate()
    with pytest.raises(ValueError, match="embedded"):
        DataConfig(task="arith", columns={"question": "q"}).validate()


def test_chat_rows_supervise_the_last_assistant_turn(tmp_path):
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
             {"role": "assistant", "content": "4"}]
    src = _jsonl(tmp_path / "chat.jsonl", [{"messages": convo}])
    (ex,) = load_examples(DataConfig(task="chat", source=src))
    assert ex == Example("System: Be brief.\n\nUser: What is 2+2?\n\nAssistant: ", "4")
    _jsonl(tmp_path / "bad.jsonl", [{"messages": convo[:2]}])
    with pytest.raises(ValueError, match="must end with an assistant message"):
        load_examples(DataConfig(task="chat", source=str(tmp_path / "bad.jsonl")))
    with pytest.raises(ValueError, match="needs data.source"):
        DataConfig(task="chat").validate()


HUMANEVAL_ROW = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add a and b.\"\"\"\n",
                 "canonical_solution": "    return a + b\n", "test": "", "entry_point": "add"}
CHAT_ROW = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                         {"role": "assistant", "content": "4"}]}
NO_CHAT_TEMPLATE = {"mbpp"}  # its prompt has two fields (the task and its tests): a chat message carries one


def _one_example(task, tmp_path):
    """(cfg, the task's first example, the chat messages a user of the exported draft would send)."""
    from adaspec_dist.data import embedded
    from adaspec_dist.data.tasks import TASKS

    if task in embedded.EMBEDDED:
        cfg = DataConfig(task=task, limit=1)
        ((text, _),) = embedded.EMBEDDED[task].pairs("train", 0, 1)
        return cfg, load_examples(cfg)[0], [{"role": "user", "content": text}]
    if task == "custom":
        cfg = DataConfig(task="custom", source=_jsonl(tmp_path / "c.jsonl", [{"q": "Why?", "a": "So."}]),
                         prompt_template="Q: {q}\nA: ", answer_template="{a}")
        return cfg, load_examples(cfg)[0], [{"role": "user", "content": "Why?"}]
    row = {"humaneval": HUMANEVAL_ROW, "chat": CHAT_ROW}.get(task) or ROWS.get(task, [None])[0]
    assert row is not None, f"task '{task}' has no row here: add one in its columns to ROWS"
    cfg = DataConfig(task=task, source=_jsonl(tmp_path / f"{task}.jsonl", [row]))
    fields, _ = TASKS[task].fields(row)
    messages = fields["messages"] if task == "chat" else [{"role": "user", "content": fields["input"]}]
    return cfg, load_examples(cfg)[0], messages


def _render(tok, template, messages, tokenize):
    saved = tok.chat_template
    try:
        tok.chat_template = template
        got = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
    finally:
        tok.chat_template = saved
    return list(got["input_ids"] if hasattr(got, "keys") else got) if tokenize else got


@pytest.mark.parametrize("task", task_names())
def test_every_task_renders_the_same_prompt_for_training_and_as_the_exported_chat_template(task, tmp_path,
                                                                                          spm_tokenizer):
    """The training text (load_examples) and what the exported draft's chat template renders come from
    the task's one prompt style, so they agree, as text and as ids (tokenize.prompt_ids: the exact
    prefix the draft was trained to continue); prompt_format is the same text as a format string."""
    from adaspec_dist.data.prompts import template_fields
    from adaspec_dist.data.tasks import chat_template_for, prompt_format
    from adaspec_dist.data.tokenize import prompt_ids

    cfg, example, messages = _one_example(task, tmp_path)
    template, tok = chat_template_for(cfg), spm_tokenizer
    if task in NO_CHAT_TEMPLATE:
        assert template is None and prompt_format(cfg).format(input="X", tests="Y").startswith("You are")
        return
    assert template is not None, f"task '{task}' exports no chat template"
    assert _render(tok, template, messages, tokenize=False) == tok.bos_token + example.prompt.rstrip(" ")
    assert _render(tok, template, messages, tokenize=True) == prompt_ids(example, tok)
    if task != "chat":  # chat's turns are its format (no format string)
        (field,) = template_fields(prompt_format(cfg))
        assert prompt_format(cfg).format(**{field: messages[-1]["content"]}) == example.prompt


def test_chat_template_target_keeps_the_tokenizers_own():
    from adaspec_dist.data.tasks import chat_template_for

    assert chat_template_for(DataConfig(task="gsm8k", chat_template="target")) is None


def test_a_null_answer_is_refused_not_trained_as_none(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": null}\n')
    with pytest.raises(ValueError, match=r"row 1 has a null 'answer' \(1 such rows\)"):
        load_examples(DataConfig(task="gsm8k", source=str(src)))


def test_alpacas_optional_input_may_be_null(tmp_path):
    src = tmp_path / "alpaca.jsonl"
    src.write_text('{"instruction": "Say hi.", "input": null, "output": "Hi."}\n')
    (ex,) = load_examples(DataConfig(task="alpaca", source=str(src)))
    assert "### Input" not in ex.prompt and ex.answer == "Hi."
