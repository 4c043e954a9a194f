"""Chat formatting: system prompt, reflective openings, and the model's chat template.

Raw text (no question/answer) stays a `text` record: it trains as continued pretraining, so a
raw Assamese corpus is served by the same pipeline as a chat dataset.
"""

from __future__ import annotations

import random
from typing import Any

from lowres_ft.data.load import Record

# Reflective openings for an empathetic tone (after the Bengali empathetic-chatbot project).
REFLECTIVE_PREFIXES: dict[str, tuple[str, ...]] = {
    "bn": ("আমি বুঝতে পারছি। ", "আপনার কথা শুনে বুঝতে পারছি। ", "এটা বোঝা যায়। "),
    "as": ("মই বুজি পাইছোঁ। ", "আপোনাৰ কথা শুনি বুজি পাইছোঁ। ", "এইটো বুজিব পাৰি। "),
    "hi": ("मैं समझ सकता हूँ। ", "आपकी बात सुनकर समझ आता है। ", "यह समझ में आता है। "),
    "en": ("I understand. ", "I hear you. ", "That makes sense. "),
}


def with_system_prompt(record: Record, system_prompt: str) -> Record:
    """Put the system prompt first, replacing one the data had; text records are unchanged."""
    if not system_prompt or not record.is_chat:
        return record
    turns = [m for m in record.messages if m["role"] != "system"]
    return Record(record.source, [{"role": "system", "content": system_prompt}, *turns])


def with_reflective_prefix(record: Record, language: str, rng: random.Random) -> Record:
    """Open the first assistant reply with a reflection, unless it already starts with one."""
    prefixes = REFLECTIVE_PREFIXES.get(language)
    if not prefixes or not record.is_chat:
        return record
    messages = [dict(m) for m in record.messages]
    for message in messages:
        if message["role"] == "assistant":
            if not any(message["content"].startswith(p.strip()) for p in prefixes):
                message["content"] = rng.choice(prefixes) + message["content"]
            break
    return Record(record.source, messages)


def format_record(record: Record | dict[str, Any], tokenizer: Any) -> str:
    """The exact string the model trains on: the chat template for chats, the text for raw."""
    if isinstance(record, dict):
        record = Record.from_json(record)
    if record.text is not None:
        return record.text + (tokenizer.eos_token or "")
    return tokenizer.apply_chat_template(record.messages, tokenize=False)


class TemplateError(ValueError):
    """The chat template cannot be used for reply-only loss; the message says why."""


def tokenize_for_training(record: Record | dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    """Token ids and a mask that is 1 on assistant-reply tokens (their end-of-turn token
    included) and 0 on system/user tokens, so the loss trains replies only.

    Works with any chat template that renders a conversation's prefix as a prefix of the whole
    (TRL's own masks need `{% generation %}` markers, which most templates, SmolLM2's included,
    lack). Raw text records train on every token and end with EOS.
    """
    if isinstance(record, dict):
        record = Record.from_json(record)
    if record.text is not None:
        ids = tokenizer(record.text, add_special_tokens=False)["input_ids"]
        ids = [*ids, tokenizer.eos_token_id]
        return {"input_ids": ids, "assistant_masks": [1] * len(ids)}
    text = tokenizer.apply_chat_template(record.messages, tokenize=False)
    spans = []
    for index, message in enumerate(record.messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            record.messages[:index], tokenize=False, add_generation_prompt=True
        )
        through = tokenizer.apply_chat_template(record.messages[: index + 1], tokenize=False)
        if not (text.startswith(before) and text.startswith(through)):
            raise TemplateError(
                f"{record.source}: the chat template renders a conversation's start differently "
                "from the whole, so reply tokens cannot be located; use a model whose template "
                "is prefix-preserving (ChatML, Llama 3, Gemma are)."
            )
        end = len(through.rstrip())  # the turn's end token is trained; the newline after is not
        spans.append((len(before), end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(start < span_end and end > span_start for span_start, span_end in spans))
        for start, end in encoded["offset_mapping"]
    ]
    return {"input_ids": encoded["input_ids"], "assistant_masks": mask}
