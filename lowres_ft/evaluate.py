"""Evaluation: does the fine-tuned model answer better than the base, and in the right script?

Two kinds of numbers, each for the base and the fine-tuned model on the same rows and the same
decoding settings:
- likelihood of the reference replies: token-weighted perplexity on reply tokens only, and bits
  per character, which compares models whose tokenizers cut Bengali into very different numbers
  of tokens. Computed batch by batch from hidden states, a chunk of reply positions at a time,
  so full-vocabulary logits are never held for a batch (a known OOM at 128k vocabularies).
- generated replies scored against the references (chrF++, BLEU, ROUGE-L) and for script
  fidelity (lowres_ft.metrics).

Writes <run_dir>/evaluation/: metrics.json, metrics.csv, comparison.png, examples.jsonl; every
generated reply also goes to <run_dir>/generated_responses.jsonl/.csv.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowres_ft.config import LowresError, RunConfig, find_path
from lowres_ft.data.format import tokenize_for_training
from lowres_ft.data.load import Record, load_rows
from lowres_ft.data.prepare import DATA_DIR, VALIDATION_FILE, read_records
from lowres_ft.generate import (
    ChatModel,
    GenerationSettings,
    ResponseLog,
    generate_replies,
    load_chat_model,
)
from lowres_ft.metrics import score_replies

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

EVAL_DIR = "evaluation"
# Reply positions per lm_head call: 1,024 x 128k vocabulary x 4 bytes is 0.5 GiB at most.
LOGIT_CHUNK = 1024
COMPARED = (
    "perplexity",
    "bits_per_character",
    "chrf_pp",
    "bleu",
    "rouge_l",
    "script_share",
    "language_share",
)


class EvaluationError(LowresError, ValueError):
    """Nothing to evaluate on, or no adapter; the message says which stage to run first."""


@dataclass
class ReplyLoss:
    """Summed negative log-likelihood (nats) of reference reply tokens and what it covers."""

    tokens: int = 0
    characters: int = 0
    nll: float = 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def bits_per_character(self) -> float:
        return self.nll / math.log(2) / self.characters if self.characters else float("nan")


def _decoder_and_head(model: Any) -> tuple[Any, Any, float | None]:
    """The transformer body, the output head and Gemma-style logit soft-capping, so the loss
    can be computed from hidden states a chunk at a time (LoRA layers sit in the body)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = causal_lm.get_decoder()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return decoder, causal_lm.get_output_embeddings(), softcap


def reply_loss(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    max_seq_length: int,
    batch_size: int = 4,
    progress: bool = False,
) -> ReplyLoss:
    """Loss on the tokens the model was trained to produce (assistant replies and their end
    token; every token for raw text), never holding a batch's full-vocabulary logits."""
    import torch
    from tqdm.auto import tqdm

    decoder, head, softcap = _decoder_and_head(model)
    device = next(head.parameters()).device
    rows = [tokenize_for_training(r, tokenizer) for r in records]
    rows = [(r["input_ids"][:max_seq_length], r["assistant_masks"][:max_seq_length]) for r in rows]
    total = ReplyLoss()
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc="reply loss", disable=not progress):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (ids, mask) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            scored[row, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
            scored[row, 0] = False  # the first token has nothing before it to predict it
            reply_ids = [i for i, m in zip(ids[1:], mask[1:], strict=True) if m]
            total.characters += len(tokenizer.decode(reply_ids, skip_special_tokens=True))
        with torch.no_grad():
            hidden = decoder(
                input_ids=input_ids.to(device), attention_mask=attention.to(device)
            ).last_hidden_state
            # position t predicts token t+1: keep the positions whose next token is scored
            states = hidden[:, :-1][scored[:, 1:].to(device)]
            targets = input_ids[:, 1:][scored[:, 1:]].to(device)
            for chunk in range(0, len(targets), LOGIT_CHUNK):
                logits = head(states[chunk : chunk + LOGIT_CHUNK]).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                total.nll += torch.nn.functional.cross_entropy(
                    logits, targets[chunk : chunk + LOGIT_CHUNK], reduction="sum"
                ).item()
        total.tokens += len(targets)
    return total


def evaluation_records(config: RunConfig) -> list[Record]:
    """The held-out file when eval_file is set, else the validation split from notebook 01;
    at most eval_max_rows of them (0: all)."""
    limit = config.eval_max_rows or None
    if config.eval_file:
        rows = load_rows(find_path(config.eval_file), encoding=config.encoding)
        records = [row for row in islice(rows, limit) if isinstance(row, Record)]
        source = config.eval_file
    else:
        path = Path(config.run_dir) / DATA_DIR / VALIDATION_FILE
        if not path.exists():
            raise EvaluationError(
                f"{path} not found: run notebooks/01_data_prep.ipynb (or `lowres-ft prepare`) "
                f"with run_dir={config.run_dir!r} first, or set eval_file to a held-out file."
            )
        records = list(islice(read_records(path), limit))
        source = str(path)
    if not records:
        raise EvaluationError(
            f"{source} has no rows to evaluate on: raise val_fraction in 01 or give eval_file."
        )
    return records


def prompts_and_references(
    records: list[Record], limit: int
) -> tuple[list[list[dict[str, str]]], list[str]]:
    """Each chat up to its last reply (the prompt) and that reply (the reference). Raw-text
    rows have no reply to compare with and are left to the likelihood numbers."""
    prompts, references = [], []
    for record in records:
        if len(prompts) == limit:
            break
        last = max(
            (i for i, m in enumerate(record.messages) if m["role"] == "assistant"), default=-1
        )
        if last > 0:
            prompts.append(record.messages[:last])
            references.append(record.messages[last]["content"])
    return prompts, references


@dataclass
class ModelScores:
    """One model's row of the comparison table."""

    name: str
    model: str
    adapter: str
    perplexity: float
    bits_per_character: float
    reply_tokens: int
    reply_characters: int
    chrf_pp: float = float("nan")
    bleu: float = float("nan")
    rouge_l: float = float("nan")
    script_share: float = float("nan")
    language_share: float = float("nan")
    replies: int = 0
    mean_new_tokens: float = 0.0
    stopped_at_eos: float = 0.0  # share of replies that ended at the end-of-turn token


@dataclass
class Evaluation:
    folder: Path
    scores: list[ModelScores]
    examples: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.scores]

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "scores": self.table(), "examples": self.examples}


def score_model(
    chat: ChatModel,
    name: str,
    records: list[Record],
    config: RunConfig,
    settings: GenerationSettings,
    log: ResponseLog | None = None,
    progress: bool = False,
) -> tuple[ModelScores, list[str]]:
    """Likelihood numbers on every record and generation numbers on the first prompts."""
    loss = reply_loss(
        chat.model, chat.tokenizer, records, config.max_seq_length, config.batch_size, progress
    )
    scores = ModelScores(
        name,
        chat.model_id,
        chat.adapter_id,
        round(loss.perplexity, 4),
        round(loss.bits_per_character, 4),
        loss.tokens,
        loss.characters,
    )
    prompts, references = prompts_and_references(records, config.eval_prompts)
    if not prompts:
        return scores, []
    replies = generate_replies(chat.model, chat.tokenizer, prompts, settings, progress=progress)
    texts = [r.text for r in replies]
    for prompt, reply in zip(prompts, replies, strict=True):
        if log is not None:
            log.add(
                prompt[-1]["content"],
                reply,
                settings,
                chat.model_id,
                chat.adapter_id,
                sum(m["role"] == "user" for m in prompt) - 1,
            )
    metrics = score_replies(texts, references, config.language)
    for key in ("chrf_pp", "bleu", "rouge_l", "script_share", "language_share"):
        setattr(scores, key, round(float(metrics[key]), 4))
    scores.replies = len(replies)
    scores.mean_new_tokens = round(sum(r.new_tokens for r in replies) / len(replies), 1)
    scores.stopped_at_eos = round(sum(r.stopped_at_eos for r in replies) / len(replies), 3)
    return scores, texts


def evaluate_run(config: RunConfig, include_base: bool = True, progress: bool = True) -> Evaluation:
    """Base vs fine-tuned on the same rows and settings; saved under <run_dir>/evaluation."""
    records = evaluation_records(config)
    adapter = config.trained_adapter()
    settings = GenerationSettings.from_config(config)
    log = ResponseLog(config.run_dir)
    candidates = [("base", None)] if include_base else []
    candidates.append(("fine-tuned", adapter))
    scores, replies = [], {}
    for name, adapter_path in candidates:
        chat = load_chat_model(config, adapter_path)
        row, texts = score_model(chat, name, records, config, settings, log, progress)
        scores.append(row)
        replies[name] = texts
        logger.info("%s: %s", name, row)
        del chat
    prompts, references = prompts_and_references(records, config.eval_prompts)
    examples = [
        {"prompt": p[-1]["content"], "reference": ref, **{n: replies[n][i] for n in replies}}
        for i, (p, ref) in enumerate(zip(prompts, references, strict=True))
    ]
    settings_used = {
        "rows": len(records),
        "source": config.eval_file or f"{config.run_dir}/{DATA_DIR}/{VALIDATION_FILE}",
        "language": config.language,
        "max_seq_length": config.max_seq_length,
        "generation": asdict(settings),
    }
    evaluation = Evaluation(Path(config.run_dir) / EVAL_DIR, scores, examples, settings_used)
    save_evaluation(evaluation)
    return evaluation


def save_evaluation(evaluation: Evaluation) -> None:
    folder = evaluation.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(
        json.dumps(evaluation.to_json(), indent=2, ensure_ascii=False) + "\n", "utf-8"
    )
    table = evaluation.table()
    with (folder / "metrics.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    with (folder / "examples.jsonl").open("w", encoding="utf-8") as handle:
        for example in evaluation.examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")
    figure = plot_comparison(evaluation)
    figure.savefig(folder / "comparison.png", dpi=110, bbox_inches="tight")


def plot_comparison(evaluation: Evaluation) -> Figure:
    """One small bar chart per metric (their scales differ), a bar per model."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metrics = [m for m in COMPARED if any(not math.isnan(getattr(s, m)) for s in evaluation.scores)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 3), squeeze=False)
    colours = ["#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c"]
    for axis, metric in zip(axes[0], metrics, strict=True):
        values = [getattr(s, metric) for s in evaluation.scores]
        names = [s.name for s in evaluation.scores]
        axis.bar(names, values, color=colours[: len(values)])
        axis.set_title(
            metric.replace("_", " ") + (" ↓" if metric in COMPARED[:2] else " ↑"), fontsize=9
        )
        axis.tick_params(axis="x", labelsize=8, rotation=30)
        axis.set_ylim(0, (max([v for v in values if not math.isnan(v)], default=0) or 1) * 1.2)
        for x, value in enumerate(values):
            axis.annotate(f"{value:.3g}", (x, value), ha="center", va="bottom", fontsize=8)
    figure.suptitle("base vs fine-tuned (↓ lower is better, ↑ higher is better)", fontsize=10)
    figure.tight_layout()
    return figure
