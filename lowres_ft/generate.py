"""Generation: one reply for a chat, and whether it stopped at the end-of-turn token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    text: str
    new_tokens: int
    stopped_at_eos: bool  # False: the length limit cut the reply


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    seed: int = 0,
) -> Reply:
    """Greedy by default (temperature 0), so a check or comparison is repeatable."""
    import torch

    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
    with torch.no_grad():
        output = model.generate(
            **prompt,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=bool(sampling),
            **{k: v for k, v in sampling.items() if k != "do_sample"},
        )
    new = output[0, prompt["input_ids"].shape[1] :].tolist()
    stopped = bool(new) and new[-1] == tokenizer.eos_token_id
    return Reply(tokenizer.decode(new, skip_special_tokens=True), len(new), stopped)
