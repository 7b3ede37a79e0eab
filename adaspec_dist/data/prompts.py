"""Prompt styles: ONE object per task makes both its training prompt and its exported chat template.

Contract
--------
* ``PromptStyle(template)``: ``template`` is a format string over a row's text fields.
  ``style.prompt(**fields)`` is the training prompt (``Example.prompt``; tasks.py and embedded.py
  build every prompt through it). ``style.prompt_format`` is the template itself (recorded in
  caches and model cards). ``style.chat_template()`` is a Jinja chat template such that
  ``tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)``
  renders ``bos_token + style.prompt(FIELD=text)`` without its trailing spaces (tokenize.py leaves
  those to the answer), i.e. the exact ids the draft was trained to continue; None when the
  template has more than one field (mbpp's tests: a chat message carries one text).
* ``with_context``: a second template for rows with a non-empty ``context`` field (Alpaca's
  optional input block); the chat template renders ``template`` (a chat user sends one text).
* ``ChatStyle(turn, cue)``: ``messages`` rows; ``prompt(messages=[...])`` renders each message
  with ``turn`` and ends with ``cue``; its chat template renders the same for any conversation;
  ``prompt_format`` is None (the turns are the format).
* Nothing here imports the package: tasks.py and embedded.py both build on it.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Mapping, Sequence


def _jinja_literal(text: str) -> str:
    """Constant text as a Jinja expression (Python's repr is a valid Jinja string literal)."""
    return "{{ " + repr(text) + " }}" if text else ""


def template_fields(template: str) -> list[str]:
    """The field names of a format string, in order ('{a.b}' -> 'a')."""
    return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]


@dataclass(frozen=True)
class PromptStyle:
    """A task's prompt as one format string (see the module docstring)."""
    template: str
    with_context: str | None = None

    @property
    def prompt_format(self) -> str:
        return self.template

    def prompt(self, **fields: str) -> str:
        if self.with_context is not None and fields.get("context"):
            return self.with_context.format(**fields)
        return self.template.format(**fields)

    def chat_template(self) -> str | None:
        fields = template_fields(self.template)
        if len(fields) != 1:
            return None
        before, after = self.template.split("{" + fields[0] + "}")
        return ("{{ bos_token }}" + _jinja_literal(before) + "{{ messages[-1]['content'] }}"
                + _jinja_literal(after.rstrip(" ")))


@dataclass(frozen=True)
class ChatStyle:
    """Conversations rendered as plain turns (see the module docstring)."""
    turn: str = "{role}: {content}\n\n"
    """One message; ``role`` is capitalised, ``content`` stripped."""
    cue: str = "Assistant: "
    """What follows the last message: the assistant's cue."""

    prompt_format = None

    def prompt(self, *, messages: Sequence[Mapping[str, str]]) -> str:
        return "".join(self.turn.format(role=str(m["role"]).capitalize(), content=str(m["content"]).strip())
                       for m in messages) + self.cue

    def chat_template(self) -> str | None:
        before, between, after = self._turn_parts()
        turn = ("{% for m in messages %}" + _jinja_literal(before) + "{{ m['role'] | capitalize }}"
                + _jinja_literal(between) + "{{ m['content'] | trim }}" + _jinja_literal(after) + "{% endfor %}")
        return ("{{ bos_token }}" + turn + "{% if add_generation_prompt %}" + _jinja_literal(self.cue.rstrip(" "))
                + "{% endif %}")

    def _turn_parts(self) -> tuple[str, str, str]:
        """``turn`` split around its two fields: (before {role}, between, after {content})."""
        before, rest = self.turn.split("{role}")
        between, after = rest.split("{content}")
        return before, between, after
