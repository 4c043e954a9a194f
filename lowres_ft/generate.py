"""Generation: presets, sampling, stopping (EOS, and optionally the danda and other sentence
ends), streaming, batched replies for evaluation, multi-turn chat within the context window,
and a log of every reply (`generated_responses.jsonl` and `.csv`)."""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lowres_ft.config import ConfigError, LowresError, RunConfig

logger = logging.getLogger(__name__)

# max new tokens per preset; 0: as many as the context window leaves after the prompt
PRESETS = {"short": 100, "medium": 250, "long": 500, "very_long": 0}
# Sentence ends a reply may stop at: the danda and double danda end Bengali, Assamese and
# Hindi sentences; the rest are the Latin ones.
SENTENCE_ENDS = ("।", "॥", ".", "?", "!")
RESPONSES_FILE = "generated_responses"  # .jsonl and .csv in the run folder


class GenerationError(LowresError, ValueError):
    """A prompt or setting cannot be generated from; the message says what to change."""


@dataclass
class GenerationSettings:
    """Decoding settings; temperature 0 is greedy (repeatable), above 0 samples with the seed."""

    preset: str = "short"  # short | medium | long | very_long (100 / 250 / 500 / context)
    max_new_tokens: int = 0  # overrides the preset when > 0
    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 42
    stop_at_sentence_end: bool = False  # stop at the first । ॥ . ? ! after the reply starts

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset={self.preset!r}: use one of {', '.join(PRESETS)}.")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(
                f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}: "
                "need temperature >= 0 (0 = greedy), 0 < top_p <= 1 and top_k >= 0."
            )
        if self.repetition_penalty <= 0:
            raise ConfigError("repetition_penalty must be > 0 (1.0 = off, 1.1 is usual).")

    @classmethod
    def from_config(cls, config: RunConfig, **overrides: Any) -> GenerationSettings:
        values = {
            "preset": config.preset,
            "max_new_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
            "repetition_penalty": config.repetition_penalty,
            "seed": config.seed,
            "stop_at_sentence_end": config.stop_at_sentence_end,
        }
        return cls(**{**values, **overrides})

    def token_budget(self, prompt_tokens: int, context_tokens: int) -> int:
        """New tokens allowed: the preset's (or max_new_tokens), never past the context."""
        room = context_tokens - prompt_tokens
        if room < 1:
            raise GenerationError(
                f"the prompt takes {prompt_tokens} tokens of a {context_tokens}-token context: "
                "shorten the message or clear the chat history."
            )
        wanted = self.max_new_tokens or PRESETS[self.preset] or room
        return min(wanted, room)

    def generate_kwargs(self, tokenizer: Any, prompt_length: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(
                do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k
            )
        else:  # greedy; unset sampling knobs so transformers does not warn about them
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.stop_at_sentence_end:
            from transformers import StoppingCriteriaList

            criterion = SentenceEndCriteria(tokenizer, prompt_length)
            kwargs["stopping_criteria"] = StoppingCriteriaList([criterion])
        return kwargs


class SentenceEndCriteria:
    """Stops a row once its reply text ends with a sentence end. Checked on decoded text:
    transformers' `stop_strings` match token strings and miss a danda that a byte-level
    tokenizer splits over two tokens (SmolLM2's does), so they never stop a Bengali reply."""

    TAIL_TOKENS = 8  # enough to decode the last character whole

    def __init__(self, tokenizer: Any, prompt_length: int) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        start = max(self.prompt_length, input_ids.shape[1] - self.TAIL_TOKENS)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        ended = [tail.rstrip().endswith(SENTENCE_ENDS) for tail in tails]
        return torch.tensor(ended, dtype=torch.bool, device=input_ids.device)


@dataclass
class Reply:
    text: str
    new_tokens: int
    stop_reason: str  # "eos", "sentence" (when asked), "length" or "stopped" (by the reader)
    seconds: float = 0.0

    @property
    def stopped_at_eos(self) -> bool:  # False: the length limit cut the reply
        return self.stop_reason == "eos"

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def context_window(model: Any, fallback: int = 2048) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or fallback)


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _finish(tokenizer: Any, new: list[int], budget: int, settings: GenerationSettings) -> Reply:
    """Cut padding, decide why generation stopped, decode."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos in new:
        return Reply(
            tokenizer.decode(new[: new.index(eos)], skip_special_tokens=True),
            new.index(eos) + 1,
            "eos",
        )
    while new and new[-1] == pad:
        new = new[:-1]
    text = tokenizer.decode(new, skip_special_tokens=True).rstrip("\ufffd")  # a cut character
    if (
        settings.stop_at_sentence_end
        and len(new) < budget
        and text.rstrip().endswith(SENTENCE_ENDS)
    ):
        return Reply(text, len(new), "sentence")
    return Reply(text, len(new), "length")


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    settings: GenerationSettings | None = None,
) -> Reply:
    """One reply to a chat (a list of role/content messages ending with the user's turn)."""
    return generate_replies(model, tokenizer, [messages], settings, batch_size=1)[0]


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Reply]:
    """Replies to many chats, batched with left padding (several times faster on a CPU than
    one at a time); the same settings and seed for every chat, so two models compare fairly."""
    import torch
    from tqdm.auto import tqdm

    settings = settings or GenerationSettings()
    context = context_window(model)
    prompts = [_prompt_ids(tokenizer, messages) for messages in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    replies: list[Reply | None] = [None] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="generating", disable=not progress):
        longest = max(len(prompts[i]) for i in batch)
        budget = settings.token_budget(longest, context)
        input_ids = torch.full((len(batch), longest), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, longest - len(prompts[i]) :] = torch.tensor(prompts[i])
            attention[row, longest - len(prompts[i]) :] = 1
        torch.manual_seed(settings.seed)
        started = time.perf_counter()
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=budget,
                **settings.generate_kwargs(tokenizer, longest),
            )
        seconds = (time.perf_counter() - started) / len(batch)
        for row, i in enumerate(batch):
            reply = _finish(tokenizer, output[row, longest:].tolist(), budget, settings)
            reply.seconds = seconds
            replies[i] = reply
    return [r for r in replies if r is not None]


class _CharacterStreamer:
    """Takes tokens from `generate` and hands out text as soon as it decodes to whole
    characters. transformers' TextIteratorStreamer holds text back until a space, so a long
    Bengali word (or a base model's run-on Bengali) arrived in one piece."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pieces: queue.Queue[str | None] = queue.Queue()
        self._tokens: list[int] = []
        self._shown = 0
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() sends the prompt first
            self._prompt_seen = True
            return
        self._tokens.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self._tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest
            return
        if len(text) > self._shown:
            self.pieces.put(text[self._shown :])
            self._shown = len(text)
        if text.endswith("\n"):  # start over at a line end: decoding cost stays flat
            self._tokens, self._shown = [], 0

    def end(self) -> None:
        self.pieces.put(None)


class _StopRequested:
    """A stopping rule that ends generation when the reader asks (a closed browser tab)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


class ReplyStream:
    """Iterate to get the reply's text piece by piece as it is generated; `reply` is set once
    the iteration ends. `stop()` (or abandoning the iteration) ends generation early."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        messages: list[dict[str, str]],
        settings: GenerationSettings,
    ) -> None:
        self.reply: Reply | None = None
        self._model, self._tokenizer, self._settings = model, tokenizer, settings
        self._prompt = _prompt_ids(tokenizer, messages)
        self._budget = settings.token_budget(len(self._prompt), context_window(model))
        self._streamer = _CharacterStreamer(tokenizer)
        self._stop = threading.Event()
        self._output: Any = None
        self._error: BaseException | None = None

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import torch
        from transformers import StoppingCriteriaList

        try:
            kwargs = self._settings.generate_kwargs(self._tokenizer, len(self._prompt))
            stopping = kwargs.pop("stopping_criteria", None) or StoppingCriteriaList()
            stopping.append(_StopRequested(self._stop))
            device = self._model.device
            torch.manual_seed(self._settings.seed)
            with torch.no_grad():
                self._output = self._model.generate(
                    input_ids=torch.tensor([self._prompt], device=device),
                    attention_mask=torch.ones((1, len(self._prompt)), dtype=torch.long).to(device),
                    max_new_tokens=self._budget,
                    streamer=self._streamer,
                    stopping_criteria=stopping,
                    **kwargs,
                )
        except BaseException as error:  # surfaced in the caller's thread below
            self._error = error
            self._streamer.end()

    def __iter__(self) -> Iterator[str]:
        started = time.perf_counter()
        worker = threading.Thread(target=self._run, daemon=True)
        worker.start()
        read_to_end = False
        try:
            while (piece := self._streamer.pieces.get(timeout=600)) is not None:
                yield piece
            read_to_end = True
        finally:  # the reader stopped iterating (a closed tab): let generation end at once
            if not read_to_end:
                self._stop.set()
            worker.join()
        if self._error is not None:
            raise self._error
        new = self._output[0, len(self._prompt) :].tolist()
        self.reply = _finish(self._tokenizer, new, self._budget, self._settings)
        if self._stop.is_set() and self.reply.stop_reason != "eos":
            self.reply.stop_reason = "stopped"
        self.reply.seconds = time.perf_counter() - started


def stream_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    settings: GenerationSettings | None = None,
) -> ReplyStream:
    return ReplyStream(model, tokenizer, messages, settings or GenerationSettings())


def fit_history(
    tokenizer: Any,
    messages: list[dict[str, str]],
    settings: GenerationSettings,
    context_tokens: int,
) -> list[dict[str, str]]:
    """Drop the oldest user/assistant turns (never the system prompt or the newest message)
    until the prompt plus the reply's token budget fit the context window."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    wanted = settings.max_new_tokens or PRESETS[settings.preset] or 0
    while True:
        prompt = system + turns
        if len(_prompt_ids(tokenizer, prompt)) + wanted <= context_tokens or len(turns) <= 1:
            break
        turns = turns[2:] if len(turns) > 2 else turns[-1:]
    settings.token_budget(len(_prompt_ids(tokenizer, prompt)), context_tokens)  # raises if no room
    return prompt


class ResponseLog:
    """Appends every reply with its prompt, settings, model/adapter and time to
    `generated_responses.jsonl` and `generated_responses.csv` in a folder."""

    COLUMNS = (
        "timestamp",
        "model",
        "adapter",
        "prompt",
        "reply",
        "new_tokens",
        "stop_reason",
        "seconds",
        "history_turns",
        "settings",
    )

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.jsonl = self.folder / f"{RESPONSES_FILE}.jsonl"
        self.csv = self.folder / f"{RESPONSES_FILE}.csv"
        self._lock = threading.Lock()

    def add(
        self,
        prompt: str,
        reply: Reply,
        settings: GenerationSettings,
        model_id: str,
        adapter_id: str = "",
        history_turns: int = 0,
    ) -> dict[str, Any]:
        row = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model_id,
            "adapter": adapter_id,
            "prompt": prompt,
            "reply": reply.text,
            "new_tokens": reply.new_tokens,
            "stop_reason": reply.stop_reason,
            "seconds": round(reply.seconds, 3),
            "history_turns": history_turns,
            "settings": asdict(settings),
        }
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self.jsonl.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            new_file = not self.csv.exists()
            with self.csv.open("a", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.COLUMNS)
                if new_file:
                    writer.writeheader()
                writer.writerow({**row, "settings": json.dumps(row["settings"])})
        return row

    def read(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text("utf-8").splitlines() if line]


@dataclass
class ChatSession:
    """A multi-turn chat over one model: keeps the history, trims it to the context window,
    streams or returns replies, and logs each one."""

    model: Any
    tokenizer: Any
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    system_prompt: str = ""
    log: ResponseLog | None = None
    model_id: str = ""
    adapter_id: str = ""
    history: list[dict[str, str]] = field(default_factory=list)
    last_reply: Reply | None = None  # the latest turn's reply: stop reason, tokens, time

    def clear(self) -> None:
        self.history = []
        self.last_reply = None

    def _prompt(self, message: str) -> list[dict[str, str]]:
        if not message.strip():
            raise GenerationError("the message is empty: type something to send.")
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages = system + self.history + [{"role": "user", "content": message}]
        return fit_history(self.tokenizer, messages, self.settings, context_window(self.model))

    def _remember(self, message: str, prompt: list[dict[str, str]], reply: Reply) -> None:
        self.last_reply = reply
        self.history += [
            {"role": "user", "content": message},
            {"role": "assistant", "content": reply.text},
        ]
        if self.log is not None:
            turns = sum(1 for m in prompt if m["role"] == "user") - 1
            self.log.add(message, reply, self.settings, self.model_id, self.adapter_id, turns)

    def send(self, message: str) -> Reply:
        prompt = self._prompt(message)
        reply = generate_reply(self.model, self.tokenizer, prompt, self.settings)
        self._remember(message, prompt, reply)
        return reply

    def stream(self, message: str) -> Iterator[str]:
        """Yields the reply's text pieces; the turn is remembered and logged at the end."""
        prompt = self._prompt(message)
        stream = stream_reply(self.model, self.tokenizer, prompt, self.settings)
        yield from stream
        assert stream.reply is not None
        self._remember(message, prompt, stream.reply)


@dataclass
class ChatModel:
    """A model ready for generation and the names the response log records."""

    model: Any
    tokenizer: Any
    model_id: str
    adapter_id: str = ""

    def session(
        self, settings: GenerationSettings, system_prompt: str = "", log: ResponseLog | None = None
    ) -> ChatSession:
        return ChatSession(
            self.model, self.tokenizer, settings, system_prompt, log, self.model_id, self.adapter_id
        )


def load_chat_model(config: RunConfig, adapter: str | Path | None = None) -> ChatModel:
    """The base model (and the LoRA adapter, if given) in inference mode on the best device:
    Unsloth's fast inference where it trained, transformers elsewhere (4-bit on a GPU when
    asked), fp32 on the CPU."""
    from lowres_ft.backends import choose_backend, torch_dtype
    from lowres_ft.models import fix_chat_tokens, load_tokenizer, resolve_model

    choice = choose_backend(config)
    base = resolve_model(config.model_name)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise GenerationError(
            f"{adapter} holds no LoRA adapter (adapter_config.json): run notebook 02 (or "
            "`lowres-ft train`) on this run folder first, or leave the adapter out."
        )
    if choice.name == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(adapter or base),
            max_seq_length=config.max_seq_length,
            load_in_4bit=choice.load_in_4bit,
            dtype=torch_dtype(choice.precision),
        )
        FastLanguageModel.for_inference(model)
    else:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {
            "dtype": torch_dtype(choice.precision),
            "trust_remote_code": config.trust_remote_code,
        }
        if choice.name != "cpu":
            kwargs["device_map"] = {"": 0}
            if choice.load_in_4bit:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch_dtype(choice.precision),
                )
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        tokenizer = load_tokenizer(config.model_name, config.trust_remote_code)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        model.eval()
    if config.model_name == "embedded":
        fix_chat_tokens(tokenizer)
    logger.info(
        "chat model: %s%s on %s", config.model_name, f" + {adapter}" if adapter else "", choice.name
    )
    return ChatModel(model, tokenizer, config.model_name, str(adapter or ""))
