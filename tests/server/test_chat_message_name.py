"""A chat message's ``name`` reaches the chat template for every role (as SGLang passes it), so a
template that renders participants' names gets them instead of losing them silently."""

from __future__ import annotations

from types import SimpleNamespace

from transformers import AutoTokenizer

from sglite_runtime.entrypoints.openai_chat import render_chat
from sglite_runtime.entrypoints.openai_protocol import ChatMessage

TEMPLATE = "{% for m in messages %}<{{ m.role }}{% if m.name %}:{{ m.name }}{% endif %}>{{ m.content }}{% endfor %}"


def test_name_is_passed_to_the_template(shipped_model_path):
    tm = SimpleNamespace(chat_template=TEMPLATE, tokenizer=AutoTokenizer.from_pretrained(shipped_model_path))
    msgs = [ChatMessage(role="system", content="s"), ChatMessage(role="user", content="hi", name="ann"),
            ChatMessage(role="assistant", content="yo", name="bot"), ChatMessage(role="user", content="?")]
    assert render_chat(tm, msgs, add_generation_prompt=False) == "<system>s<user:ann>hi<assistant:bot>yo<user>?"
