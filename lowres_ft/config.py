"""RunConfig: the one object that flows from a notebook's parameters cell into the library.

Field names are flat and unique so the same names serve the parameters cell, recipes, CLI flags
and the run folder's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ADAPTER_DIR = "adapter"  # where training saves the LoRA adapter inside a run folder

DATA_FORMATS = ("auto", "text", "csv", "tsv", "jsonl", "json", "hf_dataset")
DEDUP_MODES = ("none", "exact", "near")
UNSAFE_PRESETS = ("none", "sensitive")
BACKENDS = ("auto", "unsloth", "hf", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SWITCH = ("auto", "on", "off")  # packing, gradient_checkpointing, liger, compile_layers
SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "constant")
OPTIMIZERS = (
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
)


class LowresError(Exception):
    """Base of the errors a user can act on: the CLI prints them without a traceback."""


class ConfigError(LowresError, ValueError):
    """A RunConfig value is wrong; the message says which field and what to use instead."""


@dataclass
class RunConfig:
    # --- run folder -------------------------------------------------------------------------
    run_dir: str = "runs/demo"  # where config, data, logs and artefacts of this run go
    seed: int = 42  # one seed for splits, sampling and training

    # --- data -------------------------------------------------------------------------------
    data_path: str = "../shared/data/bn_instruct/bn_instruct.jsonl"  # file or folder to load
    data_format: str = "auto"  # auto | text | csv | tsv | jsonl | json | hf_dataset
    encoding: str = "utf-8"  # how to decode the file, e.g. "utf-16" or "cp1252" if not UTF-8
    question_column: str = ""  # CSV/JSON column with the user turn ("" = detect)
    answer_column: str = ""  # CSV/JSON column with the assistant turn ("" = detect)
    max_rows: int = 0  # read at most this many rows (0 = all); for quick trials

    # --- language and cleaning ----------------------------------------------------------------
    language: str = "bn"  # as | bn | hi | en | mr | ne | ... or a Unicode script name ("Tamil")
    normalize: bool = True  # NFC plus Indic fixes (stray ZWJ/ZWNJ, danda look-alikes, ৰ/র)
    min_script_ratio: float = 0.5  # share of letters that must be in the language's script
    check_language: bool = True  # reject Bengali rows in an Assamese run and vice versa
    dedup: str = "near"  # none | exact | near (MinHash LSH)
    near_dup_threshold: float = 0.8  # Jaccard similarity above which two rows are duplicates
    min_chars: int = 2  # shortest message (characters) that is kept
    max_chars: int = 8000  # longest row (characters, all turns together) that is kept
    unsafe_preset: str = "none"  # none | sensitive (PII and self-harm phrases)
    unsafe_patterns: list[str] = field(default_factory=list)  # extra regexes that reject a row
    reflective_prefixes: bool = False  # start replies with an empathetic reflection

    # --- split and formatting -------------------------------------------------------------
    val_fraction: float = 0.2  # share of rows held out for validation
    model_name: str = "embedded"  # "embedded" (SmolLM2-135M-Instruct), a local folder or hub id
    system_prompt: str = ""  # optional system turn put before every conversation
    max_seq_length: int = 512  # tokens per training example
    trust_remote_code: bool = False  # run code shipped with a hub model (off unless asked)

    # --- training ---------------------------------------------------------------------------
    backend: str = "auto"  # auto | unsloth | hf | cpu (auto: from the hardware; reason printed)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 from compute 8.0, fp16 below)
    load_in_4bit: bool = True  # QLoRA: NF4 4-bit base weights on a GPU (the CPU trains fp32)
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)
    lora_dropout: float = 0.0  # dropout on the LoRA path (0 keeps Unsloth's fused LoRA kernels)
    lora_target_modules: str = "all-linear"  # "all-linear" or e.g. "q_proj,k_proj,v_proj,o_proj"
    use_rslora: bool = False  # rank-stabilised LoRA scaling
    batch_size: int = 4  # sequences per device per step
    gradient_accumulation_steps: int = 1  # steps summed before each optimizer update
    learning_rate: float = 2e-4  # peak learning rate
    num_train_epochs: float = 1.0  # passes over the training data (when max_steps is 0)
    max_steps: int = 0  # stop after this many optimizer steps (0: use num_train_epochs)
    lr_scheduler_type: str = "cosine"  # cosine | linear | constant_with_warmup | constant
    warmup_ratio: float = 0.05  # share of steps spent warming up the learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    packing: str = "auto"  # auto | on | off (auto: padding-free where rows leave room; GPU only)
    gradient_checkpointing: str = "auto"  # auto | on | off (auto: recompute what the card needs)
    liger: str = "auto"  # auto | on | off: Liger kernels (loss without full logits) off Unsloth
    compile_layers: str = "auto"  # auto | on | off: torch.compile each decoder layer (HF on a GPU)
    optim: str = "auto"  # auto (paged 8-bit AdamW on 16 GB fp16 cards, fused AdamW on bf16 GPUs)
    logging_steps: int = 5  # log loss, learning rate and speed every N steps
    eval_steps: int = 50  # evaluate on the validation split every N steps (0: only at the end)
    eval_max_rows: int = 0  # evaluate on at most this many validation rows (0: all)
    eval_each_epoch: bool = False  # evaluate at each epoch's end instead of every eval_steps
    save_steps: int = 50  # checkpoint every N steps
    save_minutes: float = 10.0  # ...and at least every M minutes (a Colab session can drop)
    save_total_limit: int = 2  # keep the last K checkpoints
    checkpoint_dir: str = ""  # where checkpoints go ("": <run_dir>/checkpoints; may be on Drive)
    resume: bool = False  # continue from the latest checkpoint after a disconnect or crash
    auto_batch: bool = False  # shrink batch size (raising accumulation) until pre-flight fits

    # --- evaluation and chat --------------------------------------------------------------------
    eval_file: str = ""  # held-out file to evaluate on ("": the validation split from 01)
    eval_prompts: int = 24  # prompts whose replies are generated and scored (chrF++, BLEU...)
    adapter_dir: str = ""  # LoRA adapter to evaluate or chat with ("": <run_dir>/adapter)
    preset: str = "short"  # reply length: short | medium | long | very_long (100/250/500/context)
    max_new_tokens: int = 0  # overrides the preset's length when above 0
    temperature: float = 0.0  # 0: greedy (repeatable); 0.7 for livelier chat
    top_p: float = 0.9  # nucleus sampling share (when temperature is above 0)
    top_k: int = 50  # sample among the k likeliest tokens (0: no limit)
    repetition_penalty: float = 1.1  # above 1 discourages loops like "একরে একরে"
    stop_at_sentence_end: bool = False  # also stop at the first danda or . ? !

    # --- export --------------------------------------------------------------------------------
    merge_dtype: str = "fp16"  # fp16 | bf16 | fp32: weights of the merged model (never 4-bit)
    gguf_types: str = "f16,q8_0,q4_k_m"  # GGUF files to write; q4_k_m where llama-quantize exists
    hub_repo_id: str = ""  # push the export to this Hugging Face repo (needs HF_TOKEN)
    hub_private: bool = True  # create that repo as private

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> RunConfig:
        """Check every field once, with errors that name the field and the fix."""
        _one_of("data_format", self.data_format, DATA_FORMATS)
        _one_of("dedup", self.dedup, DEDUP_MODES)
        _one_of("unsafe_preset", self.unsafe_preset, UNSAFE_PRESETS)
        if not 0.0 <= self.min_script_ratio <= 1.0:
            raise ConfigError(f"min_script_ratio={self.min_script_ratio}: use a share in [0, 1].")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ConfigError(
                f"near_dup_threshold={self.near_dup_threshold}: use a Jaccard similarity in (0, 1]."
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}: use a share in [0, 1), e.g. 0.2.")
        if self.min_chars < 1 or self.max_chars <= self.min_chars:
            raise ConfigError(
                f"min_chars={self.min_chars}, max_chars={self.max_chars}: "
                "need 1 <= min_chars < max_chars."
            )
        if self.max_seq_length < 16:
            raise ConfigError(f"max_seq_length={self.max_seq_length}: use at least 16 tokens.")
        if self.max_rows < 0:
            raise ConfigError(f"max_rows={self.max_rows}: use 0 for all rows or a positive limit.")
        _one_of("backend", self.backend, BACKENDS)
        _one_of("precision", self.precision, PRECISIONS)
        if isinstance(self.gradient_checkpointing, bool):  # config.json and recipes before "auto"
            self.gradient_checkpointing = "on" if self.gradient_checkpointing else "off"
        for name in ("packing", "gradient_checkpointing", "liger", "compile_layers"):
            _one_of(name, getattr(self, name), SWITCH)
        _one_of("lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        _one_of("optim", self.optim, OPTIMIZERS)
        _one_of("merge_dtype", self.merge_dtype, ("fp16", "bf16", "fp32"))
        if self.eval_prompts < 0 or self.max_new_tokens < 0:
            raise ConfigError("eval_prompts and max_new_tokens: use 0 or a positive number.")
        from lowres_ft.generate import GenerationSettings  # checks preset and sampling knobs

        GenerationSettings.from_config(self)
        for name in (
            "lora_r",
            "lora_alpha",
            "batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "save_steps",
            "save_total_limit",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: use a whole number >= 1.")
        if not 0.0 <= self.lora_dropout < 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("lora_dropout and warmup_ratio are shares in [0, 1).")
        if self.learning_rate <= 0 or self.learning_rate > 1e-2:
            raise ConfigError(
                f"learning_rate={self.learning_rate}: LoRA trains well at 1e-5..1e-3 "
                "(2e-4 is usual)."
            )
        if self.max_steps < 0 or self.num_train_epochs <= 0:
            raise ConfigError("max_steps >= 0 (0: use epochs) and num_train_epochs > 0, please.")
        if not isinstance(self.unsafe_patterns, list):
            raise ConfigError("unsafe_patterns: give a list of regular expressions, e.g. ['foo'].")
        # Imported here: scripts imports nothing from config, and config stays cheap to import.
        from lowres_ft.data.scripts import script_for_language

        script_for_language(self.language)  # raises ConfigError-compatible ValueError if unknown
        return self

    def adapter_path(self) -> Path:
        """The adapter to evaluate or chat with: adapter_dir, else the one training saved."""
        return Path(self.adapter_dir) if self.adapter_dir else Path(self.run_dir) / ADAPTER_DIR

    def trained_adapter(self) -> Path:
        """adapter_path(), checked: the stages after training need a saved LoRA adapter."""
        adapter = self.adapter_path()
        if not (adapter / "adapter_config.json").exists():
            raise ConfigError(
                f"no LoRA adapter in {adapter}: run notebooks/02_train.ipynb (or `lowres-ft "
                f"train`) on run_dir={self.run_dir!r} first, or set adapter_dir."
            )
        return adapter

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        unknown = set(values) - cls.field_names()
        if unknown:
            raise ConfigError(
                f"unknown RunConfig field(s): {', '.join(sorted(unknown))}. "
                f"Known fields: {', '.join(sorted(cls.field_names()))}."
            )
        return cls(**values)

    def save(self, run_dir: str | Path | None = None) -> Path:
        folder = Path(run_dir or self.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path, **overrides: Any) -> RunConfig:
        """Inherit a run's saved config; overrides win and are logged so a reader sees them."""
        path = Path(folder) / CONFIG_FILE
        if not path.exists():
            raise ConfigError(
                f"{path} not found: run notebooks/01_data_prep.ipynb with run_dir={str(folder)!r}"
                " first, or point run_dir at an existing run folder."
            )
        values = json.loads(path.read_text("utf-8"))
        values = {k: v for k, v in values.items() if k in cls.field_names()}
        for name, value in overrides.items():
            if name in values and values[name] != value:
                logger.info("override %s: %r -> %r", name, values[name], value)
        values.update(overrides)
        return cls.from_dict(values)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: use one of {', '.join(allowed)}.")


def field_help() -> dict[str, str]:
    """Each field's `# help` comment in the class body: the CLI shows it with the flag."""
    import inspect
    import re

    pattern = re.compile(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$")
    found = (pattern.match(line) for line in inspect.getsource(RunConfig).splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def find_path(path: str | Path) -> Path:
    """A relative path as given if it exists, else relative to the repository checkout, so
    `../shared/data/...` works from the repo root and from `notebooks/` alike."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    in_checkout = Path(__file__).resolve().parents[1] / candidate
    return in_checkout if in_checkout.exists() else candidate


def inherit_config(run_dir: str, **parameters: Any) -> tuple[RunConfig, dict[str, Any]]:
    """For notebooks after 01: the run's saved config with this notebook's parameters on top.
    Returns the config and the overrides (name -> (saved, new)) so the notebook can show them."""
    saved = RunConfig.load(run_dir)
    given = {k: v for k, v in parameters.items() if k in RunConfig.field_names()}
    overrides = {k: (getattr(saved, k), v) for k, v in given.items() if getattr(saved, k) != v}
    # run_dir as given: the folder may have moved since it was written
    config = RunConfig.from_dict({**saved.to_dict(), **given, "run_dir": str(run_dir)})
    return config, overrides


def load_recipe(path: str | Path, **overrides: Any) -> dict[str, Any]:
    """A recipe's parameters (a YAML file of RunConfig fields, as papermill's `-f` takes it)
    with overrides on top. Overriding model_name on a machine without a GPU is a CPU trial of
    the recipe: its GPU-only choices (backend, precision) fall back to auto, with a note."""
    import yaml

    file = find_path(path)
    if not file.exists():
        raise ConfigError(f"recipe {path} not found; the recipes are in recipes/*.yaml.")
    values = yaml.safe_load(file.read_text("utf-8")) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: a recipe is a mapping of RunConfig fields to values.")
    unknown = set(values) - RunConfig.field_names()
    if unknown:
        raise ConfigError(f"{file}: unknown RunConfig field(s) {', '.join(sorted(unknown))}.")
    values.update(overrides)
    if "model_name" in overrides and not _has_cuda():
        for name in ("backend", "precision"):
            if values.get(name, "auto") != "auto":
                logger.info("CPU trial of %s: %s %r -> 'auto'", file.name, name, values[name])
                values[name] = "auto"
    return values


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def make_config(**parameters: Any) -> RunConfig:
    """Build and validate the run's config from a notebook's parameters (globals() is fine)."""
    known = RunConfig.field_names()
    return RunConfig.from_dict({k: v for k, v in parameters.items() if k in known})
