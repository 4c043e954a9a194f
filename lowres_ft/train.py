"""Training with TRL's SFTTrainer that never dies halfway: pre-flight on the worst-case batch,
time- and step-based checkpoints, resume, a NaN guard, memory and speed logs, and a run folder
that holds everything.

The stages are separate calls so the notebook can show each one; `train(config)` runs them all.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from lowres_ft.backends import BackendChoice, Hardware, choose_backend, detect_hardware, get_backend
from lowres_ft.config import ADAPTER_DIR, ConfigError, LowresError, RunConfig
from lowres_ft.data.format import tokenize_for_training
from lowres_ft.data.prepare import DATA_DIR, TRAIN_FILE, VALIDATION_FILE, read_records
from lowres_ft.memory import GIB, MemoryStats, memory_stats, model_footprint, reset_peak
from lowres_ft.models import load_tokenizer
from lowres_ft.runs import is_main_process, start_run

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EXPERIMENT_FILE = "experiment.json"
LOSS_PNG = "loss.png"
USABLE_SHARE = 0.92  # of the card: CUDA context, allocator fragmentation and other processes


class TrainingError(LowresError, RuntimeError):
    """Training cannot go on; the message has the numbers and what to change."""


# --- datasets ---------------------------------------------------------------------------------


def build_datasets(config: RunConfig, tokenizer: Any) -> tuple[Any, Any]:
    """Tokenised train and validation sets with reply-only masks, from the run's data folder."""
    import datasets

    folder = Path(config.run_dir) / DATA_DIR
    for name in (TRAIN_FILE, VALIDATION_FILE):
        if not (folder / name).exists():
            raise TrainingError(
                f"{folder / name} not found: run notebooks/01_data_prep.ipynb (or `lowres-ft "
                f"prepare`) with run_dir={config.run_dir!r} first."
            )

    def load(name: str, limit: int) -> Any:
        records = islice(read_records(folder / name), limit or None)
        return datasets.Dataset.from_list([tokenize_for_training(r, tokenizer) for r in records])

    train = load(TRAIN_FILE, 0)
    if len(train) == 0:
        raise TrainingError(f"{folder / TRAIN_FILE} is empty: check data/rejects.jsonl.")
    validation = load(VALIDATION_FILE, config.eval_max_rows)
    return train, validation


def check_stop_contract(tokenizer: Any, train_dataset: Any) -> dict[str, Any]:
    """Every reply must end with the token generation stops on, and padding must be another
    token; otherwise the model never learns to stop (or learns to stop on padding)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise TrainingError("the tokenizer has no EOS token: set tokenizer.eos_token first.")
    if pad is None or pad == eos:
        raise TrainingError(
            f"pad token {tokenizer.pad_token!r} is missing or equal to EOS "
            f"{tokenizer.eos_token!r}: "
            "padding would teach the model to stop anywhere (or never). Set a distinct pad token."
        )
    checked = min(len(train_dataset), 200)
    for row in train_dataset.select(range(checked)):
        ids, mask = row["input_ids"], row["assistant_masks"]
        trained = [i for i, m in zip(ids, mask, strict=True) if m]
        if not trained or trained[-1] != eos:
            raise TrainingError(
                f"a training row's reply does not end with EOS {tokenizer.eos_token!r}: the chat "
                "template and the tokenizer's EOS disagree, so the model would not learn to stop."
            )
    return {"eos": tokenizer.eos_token, "pad": tokenizer.pad_token, "rows_checked": checked}


# --- trainer set-up -------------------------------------------------------------------------


@dataclass
class TrainingSetup:
    """Everything the notebook shows between loading and training."""

    config: RunConfig
    hardware: Hardware
    choice: BackendChoice
    tokenizer: Any
    model: Any
    trainer: Any
    train_dataset: Any
    eval_dataset: Any
    packing: bool
    memory: list[MemoryStats] = field(default_factory=list)
    footprint: dict[str, float] = field(default_factory=dict)
    stop_contract: dict[str, Any] = field(default_factory=dict)
    compiled_layers: int = 0
    checkpointing: str = ""  # the config's setting, or what the pre-flight chose for 'auto'

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoint_dir(self.config)


def checkpoint_dir(config: RunConfig) -> Path:
    return (
        Path(config.checkpoint_dir)
        if config.checkpoint_dir
        else Path(config.run_dir) / "checkpoints"
    )


# Packing when the rows' mean length is under this share of max_seq_length, per backend.
PACKING_FILL = {"unsloth": 0.9, "hf": 0.5}


def use_packing(
    config: RunConfig, choice: BackendChoice, lengths: Sequence[int] | None = None
) -> bool:
    """Padding-free packing: rows joined end to end, positions restarting at each row.

    It pays where rows are short against max_seq_length: padded steps would then hold few
    tokens. Unsloth keeps joined rows apart at little cost (one attention call per run of
    equal-length rows) and packs unless the rows nearly fill max_seq_length; for rows that do,
    its padded path ran 58,348 tokens/s against 44,257 packed (Llama-3.2-1B, 4 x 2,048, one H200,
    docs/performance.md). On the HF backend transformers' SDPA keeps the rows apart with a block
    mask built from the positions, which costs attention work; it packs when rows average under
    half of max_seq_length, where packing doubled the useful tokens/s on real Bengali lengths.
    Off on the CPU, where a step of packed rows holds more tokens and a fixed-step demo would
    run longer."""
    if config.packing != "auto":
        return config.packing == "on"
    if choice.name not in PACKING_FILL or not lengths:
        return False
    cut = [min(n, config.max_seq_length) for n in lengths]
    return sum(cut) / len(cut) < config.max_seq_length * PACKING_FILL[choice.name]


def use_liger(config: RunConfig, choice: BackendChoice) -> bool:
    """Liger's Triton kernels (a cross-entropy fused with the output layer, so the 128k-vocabulary
    logits are never held; RMSNorm, SwiGLU, RoPE where the layers are not compiled:
    `liger_kernel_config`) on the transformers GPU backend. Unsloth has its own, and Triton needs
    a GPU."""
    if config.liger == "off" or choice.name != "hf":
        if config.liger == "on" and choice.name == "cpu":
            raise ConfigError("liger='on' needs a CUDA GPU (Triton kernels); use 'auto' or 'off'.")
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError as error:
        if config.liger == "on":
            raise ConfigError(
                f"liger='on' but liger-kernel does not import ({error}): pip install liger-kernel, "
                "or use liger='auto'."
            ) from None
        logger.info("liger-kernel is not installed: TRL's chunked loss and transformers' kernels")
        return False
    return True


def use_compiled_layers(config: RunConfig, choice: BackendChoice) -> bool:
    """torch.compile per decoder layer on the HF backend on a GPU (`compile_decoder_layers`):
    +6% tokens/s on full 2,048-token rows and +34% on real Bengali lengths, packed, for a
    Llama-3.2-1B shape on an H200, after about 10-20 s of compiling (docs/performance.md).
    Unsloth compiles its own pieces; on the CPU compiling costs more than it saves."""
    if config.compile_layers == "on":
        if choice.name == "unsloth":
            raise ConfigError(
                "compile_layers='on' is for the HF backend; Unsloth compiles its own."
            )
        return True
    return config.compile_layers == "auto" and choice.name == "hf"


def liger_kernel_config(compiled_layers: bool) -> dict[str, bool] | None:
    """Which of Liger's kernels to swap in. Inside compiled layers only the loss (fused with the
    output layer, outside the layers) is Liger's; the layers' RMSNorm, SwiGLU and RoPE stay
    transformers' own, which inductor fuses. Liger 0.8's RoPE goes through its dispatcher, which
    is `torch.compiler.disable`d, and splits every compiled layer's graph at the attention (12
    graph breaks at Llama-3.2-1B on an H200). Its RMSNorm and SwiGLU are autograd functions whose
    saved tensors the partitioner cannot recompute, so with a recompute budget it recomputed
    matmuls instead (49,409 tokens/s against 61,826 without them, 1B); and at 8B without a
    budget the layers ran faster without them (14,576 against 13,372; docs/performance.md)."""
    if compiled_layers:
        return {"rope": False, "rms_norm": False, "swiglu": False}
    return None


def choose_optimizer(config: RunConfig, choice: BackendChoice) -> str:
    """LoRA's optimizer states are small (fp32 AdamW: 0.3 GiB for an 8B at r=16), so speed
    decides where memory allows: one fused kernel instead of bitsandbytes' per-tensor launches.
    Paged 8-bit AdamW where every byte counts: the 16 GB fp16 cards (T4, P100, V100)."""
    on_gpu = choice.name != "cpu"
    if config.optim == "auto":
        if not on_gpu:
            return "adamw_torch"
        if choice.load_in_4bit and choice.precision == "fp16":
            return "paged_adamw_8bit"
        return "adamw_torch_fused"
    if not on_gpu and config.optim not in ("adamw_torch", "adamw_torch_fused"):
        logger.warning("optim=%r needs a CUDA GPU (bitsandbytes): AdamW on the CPU", config.optim)
        return "adamw_torch"
    return config.optim


def sft_config(config: RunConfig, choice: BackendChoice, packing: bool) -> Any:
    from trl import SFTConfig

    liger = use_liger(config, choice)

    on_gpu = choice.name != "cpu"
    optim = choose_optimizer(config, choice)
    eval_steps = config.eval_steps or None
    return SFTConfig(
        output_dir=str(checkpoint_dir(config)),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps or -1,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=optim,
        bf16=choice.precision == "bf16",  # explicit: TRL's default would pick bf16 on a T4
        fp16=choice.precision == "fp16",
        use_cpu=not on_gpu,
        gradient_checkpointing=config.gradient_checkpointing != "off" and choice.name != "unsloth",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=liger,
        liger_kernel_config=liger_kernel_config(use_compiled_layers(config, choice))
        if liger
        else None,
        ddp_find_unused_parameters=False,  # one process per GPU: LoRA weights all get gradients
        max_length=config.max_seq_length,
        packing=packing,
        padding_free=packing,
        train_sampling_strategy="random" if packing else "group_by_length",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        # The Trainer's filter logs the average of earlier losses in place of a NaN, so NanGuard
        # would never see one; it also reads the loss back from the GPU after every micro-batch.
        logging_nan_inf_filter=False,
        eval_strategy="epoch" if config.eval_each_epoch else "steps" if eval_steps else "no",
        eval_steps=eval_steps,
        eval_on_start=not config.resume,
        prediction_loss_only=True,  # never keep full-vocabulary logits across eval batches
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def setup_training(config: RunConfig, hardware: Hardware | None = None) -> TrainingSetup:
    """Choose the backend, load the model with LoRA, tokenise the data, build the trainer."""
    start_run(config)
    hardware = hardware or detect_hardware()
    choice = choose_backend(config, hardware)
    logger.info("%s", choice)
    memory = [memory_stats("before load")]
    tokenizer = load_tokenizer(config.model_name, config.trust_remote_code)
    model = get_backend(choice).load(config, choice, tokenizer)
    memory.append(memory_stats("after load"))
    train_dataset, eval_dataset = build_datasets(config, tokenizer)
    contract = check_stop_contract(tokenizer, train_dataset)  # on whole rows, before the cut
    train_dataset = fit_rows_to_length(config, train_dataset, "training")
    if eval_dataset is not None and len(eval_dataset):
        eval_dataset = fit_rows_to_length(config, eval_dataset, "validation")
    packing = use_packing(config, choice, [len(ids) for ids in train_dataset["input_ids"]])
    from lowres_ft.sft import SyncFreeSFTTrainer  # after the backend: Unsloth before TRL

    trainer = SyncFreeSFTTrainer(
        model=model,
        args=sft_config(config, choice, packing),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    keep_adapters_in_fp32(trainer.model, choice)
    if trainer.args.use_liger_kernel:
        # train() applies Liger to the model; the pre-flight has to measure with it already
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)
    compiled = 0
    if use_compiled_layers(config, choice):  # after Liger, so its kernels are in the graph
        from lowres_ft.backends.hf import compile_decoder_layers

        compiled = compile_decoder_layers(trainer.model)
        logger.info("torch.compile on %d decoder layers", compiled)
    setup = TrainingSetup(
        config,
        hardware,
        choice,
        tokenizer,
        trainer.model,
        trainer,
        train_dataset,
        eval_dataset,
        packing,
        memory,
        model_footprint(trainer.model),
        contract,
        compiled,
        config.gradient_checkpointing,
    )
    from lowres_ft.callbacks import MetricsCallback, NanGuard, TimedCheckpoints

    trainer.add_callback(MetricsCallback(setup))
    trainer.add_callback(NanGuard())
    trainer.add_callback(TimedCheckpoints(config.save_minutes))
    return setup


def fit_rows_to_length(config: RunConfig, dataset: Any, split: str) -> Any:
    """Rows cut to max_seq_length here, on every backend, and rows with no reply token left in
    that length left out, with a count of each.

    TRL would cut the rows itself, but Unsloth's SFTTrainer, padded, passed 2,601-token rows
    through; Unsloth cut the ids in the model and not the labels, and its loss indexed past their
    end (a CUDA assert on the H200, docs/performance.md). A row whose reply lies wholly past the
    limit trains nothing: padded, TRL drops it; packed, a step made only of such rows has a loss
    of 0/0 (NaN). Fails if no row is left."""
    limit = config.max_seq_length
    keep = [i for i, mask in enumerate(dataset["assistant_masks"]) if any(mask[:limit])]
    lost = len(dataset) - len(keep)
    if lost:
        message = (
            f"{lost} of {len(dataset)} {split} rows have no reply token within "
            f"max_seq_length={limit} (the prompt alone fills it)"
        )
        if not keep:
            raise TrainingError(
                f"{message}: raise max_seq_length (see the token lengths in 01's report)."
            )
        logger.warning("%s; they are left out", message)
        dataset = dataset.select(keep)
    long = sum(len(ids) > limit for ids in dataset["input_ids"])
    if not long:
        return dataset
    logger.warning(
        "%d of %d %s rows are longer than max_seq_length=%d tokens: cut to it (their ends are "
        "not trained; raise max_seq_length to keep them whole)",
        long,
        len(dataset),
        split,
        limit,
    )
    columns = [c for c in ("input_ids", "assistant_masks") if c in dataset.column_names]
    return dataset.map(
        lambda row: {c: row[c][:limit] for c in columns}, desc=f"Cutting {split} rows"
    )


def keep_adapters_in_fp32(model: Any, choice: BackendChoice) -> None:
    """TRL casts a quantized model's trainable LoRA weights to bf16. On a GPU without native
    bf16 (T4, P100, V100) that is emulated and breaks fp16 loss scaling, so cast them back."""
    import torch

    if choice.precision == "bf16":
        return
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def adapter_dtypes(model: Any) -> set[str]:
    return {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}


# --- pre-flight ---------------------------------------------------------------------------------


@dataclass
class Preflight:
    batch_size: int
    gradient_accumulation_steps: int
    sequence_length: int
    train_peak_gib: float  # forward + backward on the worst-case batch, measured
    eval_peak_gib: float  # forward on the worst-case evaluation batch, measured
    optimizer_gib: float  # AdamW states for the trainable weights, computed
    predicted_peak_gib: float
    card_gib: float
    usable_gib: float
    fits: bool
    step_seconds: float  # of the worst-case step; an upper bound for a step's time
    advice: str
    gradient_checkpointing: str = ""  # what gradient_checkpointing='auto' chose, and why

    def __str__(self) -> str:
        if not self.card_gib:
            return (
                f"pre-flight on CPU: worst-case step ({self.batch_size} x {self.sequence_length} "
                f"tokens) took {self.step_seconds:.1f} s. {self.advice}"
            )
        verdict = "fits" if self.fits else "DOES NOT FIT"
        checkpointing = (
            f" Gradient checkpointing: {self.gradient_checkpointing}."
            if self.gradient_checkpointing
            else ""
        )
        return (
            f"pre-flight: batch {self.batch_size} x {self.sequence_length} tokens, predicted peak "
            f"{self.predicted_peak_gib:.2f} GiB (train with optimizer {self.train_peak_gib:.2f}; "
            f"eval {self.eval_peak_gib:.2f}) of {self.usable_gib:.1f} "
            f"usable GiB: {verdict}. {self.advice}{checkpointing}"
        )


def _worst_case_batch(setup: TrainingSetup, batch_size: int) -> dict[str, Any]:
    """`batch_size` copies of the longest training row, at the longest length the run sees."""
    import torch

    lengths = setup.train_dataset["input_ids"]
    longest = max(range(len(lengths)), key=lambda i: len(lengths[i]))
    ids = list(lengths[longest])
    row = len(ids)
    length = setup.config.max_seq_length if setup.packing else min(row, setup.config.max_seq_length)
    ids = (ids * (length // row + 1))[:length]
    if setup.packing and setup.choice.name != "unsloth":
        # As TRL's padding-free collator hands it over: one row of all the tokens, positions
        # restarting at each joined row, no attention mask, so the attention for packed rows
        # runs (and takes memory) as it will in training.
        input_ids = torch.tensor([ids * batch_size])
        positions = torch.arange(input_ids.shape[1]) % min(row, length)
        return {
            "input_ids": input_ids,
            "labels": input_ids.clone(),
            "position_ids": positions[None],
        }
    input_ids = torch.tensor([ids] * batch_size)
    labels, attention_mask = input_ids.clone(), torch.ones_like(input_ids)
    if not setup.packing and batch_size > 1:
        # Real padded batches carry a padding mask, which moves SDPA off its fused kernels to
        # ones that use more memory; one padded position makes the pre-flight take that path.
        attention_mask[-1, -1] = 0
        labels[-1, -1] = -100
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _optimizer_bytes(setup: TrainingSetup) -> int:
    """Two AdamW moments per trainable weight: fp32 (8 bytes), or 8-bit (2 bytes)."""
    optim = setup.trainer.args.optim
    per_weight = 2 if "8bit" in str(optim) else 8
    return int(setup.footprint["trainable_params"] * per_weight)


def preflight(setup: TrainingSetup) -> Preflight:
    """One forward+backward (through the trainer's own training step) and one evaluation step
    on the worst-case batch, before any time is spent. With gradient_checkpointing='auto' on the
    HF backend it first finds how few layers need checkpointing (`fit_checkpointing`). With
    auto_batch the batch size then halves (accumulation doubles, so the effective batch stays)
    until the run fits."""
    config = setup.config
    batch, accumulation = config.batch_size, config.gradient_accumulation_steps
    if sizes_checkpointing(setup):
        result = fit_checkpointing(setup, batch, accumulation)
    else:
        result = _measure(setup, batch, accumulation)
    while not result.fits and config.auto_batch and batch > 1:
        batch, accumulation = batch // 2, accumulation * 2
        result = _measure(setup, batch, accumulation)
    if (batch, accumulation) != (config.batch_size, config.gradient_accumulation_steps):
        setup.trainer.args.per_device_train_batch_size = batch
        setup.trainer.args.per_device_eval_batch_size = batch
        setup.trainer.args.gradient_accumulation_steps = accumulation
        config.batch_size, config.gradient_accumulation_steps = batch, accumulation
        config.save()
    setup.memory.append(memory_stats("after pre-flight"))
    return result


def sizes_checkpointing(setup: TrainingSetup) -> bool:
    """gradient_checkpointing='auto' is sized by measurement on the HF backend on a GPU. Unsloth
    keeps its own checkpointing, the one its loop (which the default path is measured against)
    uses; the CPU has no card memory to measure, and checkpoints."""
    return (
        setup.config.gradient_checkpointing == "auto"
        and setup.choice.name == "hf"
        and setup.hardware.device == "cuda"
    )


def fit_checkpointing(setup: TrainingSetup, batch: int, accumulation: int) -> Preflight:
    """Recompute only as much of the forward as the card's memory needs. Recomputing every
    layer's forward in the backward cost 27% of the speed at Llama-3.2-1B, 4 x 2,048 tokens, on
    an H200 (44,425 tokens/s with it, 60,907 without), and without it that run peaked at 11.0
    GiB, inside a T4's 15 (docs/performance.md). So: measure without checkpointing; if that does
    not fit, with every layer checkpointed. In between, each checkpointed layer frees about the
    same memory: if checkpointing one layer in three or fewer is predicted to fit, that is the
    cheapest, and it is measured. Otherwise compiled layers keep only part of their activations
    and recompute the rest (`recompute_budget`): at 8B, 2 x 2,048 tokens, that peaked at 10.3
    GiB for 20% of the speed, against 7.7 GiB for 28% with every layer checkpointed. Falls back
    to every layer whenever a measurement says no."""
    from lowres_ft.backends.hf import decoder_layers, set_recompute_budget

    layers = len(decoder_layers(setup.model))
    set_gradient_checkpointing(setup, 0)
    set_recompute_budget(1.0)
    without = _measure(setup, batch, accumulation)
    if without.fits:
        return _chosen(setup, without, f"off (the run fits without it: {_peak(without)})")
    set_gradient_checkpointing(setup, 1)
    every_layer = _measure(setup, batch, accumulation)
    if every_layer.fits:
        every = sparsest_checkpointing(
            layers,
            without.predicted_peak_gib,
            every_layer.predicted_peak_gib,
            every_layer.usable_gib,
        )
        if every >= 3 or (every == 2 and not setup.compiled_layers):
            set_gradient_checkpointing(setup, every)
            partial = _measure(setup, batch, accumulation)
            if partial.fits:
                count = math.ceil(layers / every)
                note = f"{count} of {layers} layers, one in {every} ({_peak(without)} without)"
                return _chosen(setup, partial, note)
        elif setup.compiled_layers:
            budget = recompute_budget(
                without.predicted_peak_gib, every_layer.predicted_peak_gib, every_layer.usable_gib
            )
            set_gradient_checkpointing(setup, 0)
            set_recompute_budget(budget)
            lean = _measure(setup, batch, accumulation)
            if lean.fits:
                note = (
                    f"off; the compiled layers keep {budget:.0%} of their activations and "
                    f"recompute the rest ({_peak(lean)}; {_peak(without)} without)"
                )
                return _chosen(setup, lean, note)
            set_recompute_budget(1.0)
        set_gradient_checkpointing(setup, 1)  # back to every layer, which was measured to fit
    return _chosen(setup, every_layer, f"all {layers} layers ({_peak(without)} without)")


def _chosen(setup: TrainingSetup, result: Preflight, note: str) -> Preflight:
    """Say what the pre-flight chose for gradient_checkpointing='auto', and keep it."""
    setup.checkpointing = note
    logger.info("gradient checkpointing: %s", note)
    return replace(result, gradient_checkpointing=note)


def recompute_budget(without: float, every_layer: float, usable: float) -> float:
    """The activation share compiled layers keep (`set_recompute_budget`) for a run predicted at
    `without` GiB with nothing recomputed and `every_layer` GiB with every layer checkpointed.
    The peak moved about linearly between the two: measured at 8B (23.2 and 7.4 GiB), 15.3 at
    0.5, 12.7 at 0.3 and 10.3 at 0.15, against 15.3, 12.1 and 9.8 by the line. So the line's
    share for `usable`, less a fifth for its error, kept between the least and the most measured
    (0.15 and 0.5, which ran at the same speed at 8B)."""
    if not math.isfinite(without) or without <= every_layer:
        return 0.15
    share = 0.8 * (usable - every_layer) / (without - every_layer)
    return round(min(0.5, max(0.15, share)), 2)


def _peak(result: Preflight) -> str:
    if math.isinf(result.predicted_peak_gib):
        return "out of memory"
    return f"{result.predicted_peak_gib:.2f} GiB"


def sparsest_checkpointing(layers: int, without: float, every_layer: float, usable: float) -> int:
    """The largest n such that checkpointing layers 0, n, 2n, ... (ceil(layers / n) of them) is
    predicted to fit in `usable` GiB, each checkpointed layer freeing (without - every_layer) /
    layers; 1 when none is, or when the peak without checkpointing is not known (out of memory)."""
    if not math.isfinite(without) or without <= every_layer:
        return 1
    freed_per_layer = (without - every_layer) / layers
    for every in range(layers, 1, -1):
        if without - freed_per_layer * math.ceil(layers / every) <= usable:
            return every
    return 1


def set_gradient_checkpointing(setup: TrainingSetup, every_n_layers: int) -> None:
    """0: off; n: decoder layers 0, n, 2n, ... recompute their forward in the backward
    (transformers' `every_n_layers`). The trainer's arguments follow, because train() enables
    checkpointing again from them."""
    model, args = setup.model, setup.trainer.args
    if not every_n_layers:
        model.gradient_checkpointing_disable()
        args.gradient_checkpointing = False
        return
    kwargs = {"use_reentrant": False}
    model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers
    )
    args.gradient_checkpointing = True
    args.gradient_checkpointing_kwargs = {**kwargs, "every_n_layers": every_n_layers}


def _measure(setup: TrainingSetup, batch: int, accumulation: int) -> Preflight:
    import torch

    trainer, model = setup.trainer, setup.model
    inputs = _worst_case_batch(setup, batch)
    length = inputs["input_ids"].shape[1]
    on_gpu = setup.hardware.device == "cuda"
    backend = get_backend(setup.choice)
    trainer.current_gradient_accumulation_steps = accumulation  # set by train(); not there yet
    reset_peak()
    started = time.perf_counter()
    try:
        with _forward_as_in_training(trainer, model):
            backend.for_training(model)  # as train() sets it; evaluation as evaluate() does
            prepared = trainer._prepare_inputs(inputs)
            if on_gpu:
                _steps_with_optimizer(trainer, model, prepared)
                torch.cuda.synchronize()
            else:  # no memory to measure: one step gives the time
                trainer.training_step(model, prepared, _items_in_batch(trainer, prepared))
            step_seconds = time.perf_counter() - started
            train_peak = torch.cuda.max_memory_allocated() / GIB if on_gpu else 0.0
            model.zero_grad(set_to_none=True)
            reset_peak()
            model.eval()
            trainer.prediction_step(
                model, trainer._prepare_inputs(inputs), prediction_loss_only=True
            )
            eval_peak = torch.cuda.max_memory_allocated() / GIB if on_gpu else 0.0
    except torch.OutOfMemoryError:
        train_peak = eval_peak = float("inf")
        step_seconds = float("nan")
    finally:
        backend.for_training(model)
    if math.isinf(train_peak):
        # Out here, not in the except block: there the traceback's frames still hold the step's
        # tensors, and the next measurement (auto checkpointing, auto_batch) would count them.
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
    optimizer = _optimizer_bytes(setup) / GIB  # already inside train_peak, shown for reference
    card = setup.hardware.memory_gib
    usable = card * USABLE_SHARE
    predicted = max(train_peak, eval_peak)
    fits = not on_gpu or predicted <= usable
    if not on_gpu:
        steps = _planned_steps(setup, batch, accumulation)
        minutes = steps * accumulation * step_seconds / 60
        advice = f"{steps} steps planned: about {minutes:.0f} min at most."
    elif fits:
        advice = f"headroom {usable - predicted:.1f} GiB."
    else:
        advice = (
            "Lower batch_size (raise gradient_accumulation_steps to keep the effective batch), "
            "lower max_seq_length, keep load_in_4bit and gradient_checkpointing on, or set "
            "auto_batch=True."
        )
    return Preflight(
        batch,
        accumulation,
        length,
        round(train_peak, 3),
        round(eval_peak, 3),
        round(optimizer, 3),
        round(predicted, 3),
        card,
        round(usable, 2),
        fits,
        round(step_seconds, 3),
        advice,
    )


@contextmanager
def _forward_as_in_training(trainer: Any, model: Any) -> Iterator[None]:
    """Once training starts, accelerate wraps forward in autocast and upcasts its outputs to fp32;
    activations and logits then take other dtypes, and other memory, than without the wrapper
    (0.46 GiB more for a Llama-3.2-1B shape on the HF backend). The pre-flight measures through
    the same wrapper and takes it off again, so the trainer later wraps a plain forward."""
    accelerator = trainer.accelerator
    if not accelerator.native_amp:
        yield
        return
    from accelerate.utils import convert_outputs_to_fp32, get_mixed_precision_context_manager

    autocast = get_mixed_precision_context_manager(
        accelerator.native_amp, accelerator.autocast_handler
    )
    had_own_forward = "forward" in vars(model)
    original = model.forward
    model.forward = convert_outputs_to_fp32(autocast(original))
    try:
        yield
    finally:
        if had_own_forward:
            model.forward = original
        else:
            del model.forward


def _steps_with_optimizer(trainer: Any, model: Any, inputs: dict[str, Any]) -> None:
    """Two real steps, optimizer update included, then the trainable weights are put back and
    the optimizer dropped, so training starts untouched. The peak is the second step's, which
    holds the optimizer's states as every training step does: the first also compiles
    (Unsloth's layers, the HF backend's compiled layers) and creates those states."""
    import torch

    saved = {  # on the CPU: a copy on the card would count against the peak it measures
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }
    optimizer = trainer.create_optimizer()
    items = _items_in_batch(trainer, inputs)
    try:
        for step in range(2):
            trainer.training_step(model, inputs, items)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 0:
                torch.cuda.synchronize()
                reset_peak()
    finally:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in saved:
                    parameter.copy_(saved[name])
        trainer.optimizer = None
        del optimizer


def _items_in_batch(trainer: Any, inputs: dict[str, Any]) -> Any:
    """The trained-token count the training loop passes with each batch, so the pre-flight's
    step is the loop's call (Unsloth's patched loss reads it)."""
    count = getattr(trainer, "_get_num_items_in_batch", None)
    return count([inputs], inputs["input_ids"].device) if count else None


def _planned_steps(setup: TrainingSetup, batch: int, accumulation: int) -> int:
    config = setup.config
    if config.max_steps:
        return config.max_steps
    per_epoch = math.ceil(len(setup.train_dataset) / (batch * accumulation))
    return math.ceil(per_epoch * config.num_train_epochs)


# --- training and results -------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: str
    adapter_dir: str
    global_step: int
    stopped_reason: str
    seconds: float
    train_loss: float | None
    eval_losses: list[tuple[int, float]]
    tokens_per_second: float
    peak_memory_gib: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def latest_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: a kill during a save leaves a folder without
    trainer_state.json (written last), and resuming from it would fail."""
    checkpoints = [
        p
        for p in Path(folder).glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()
    ]
    if not checkpoints:
        return None
    return str(max(checkpoints, key=lambda p: int(p.name.split("-")[-1])))


def run_training(setup: TrainingSetup, preflight_result: Preflight | None = None) -> TrainResult:
    """Train (resuming if asked), then save the adapter, tokenizer, experiment.json and plot."""
    import torch

    config, trainer = setup.config, setup.trainer
    if preflight_result is not None and not preflight_result.fits:
        raise TrainingError(f"the run would run out of GPU memory: {preflight_result}")
    resume_from = latest_checkpoint(setup.checkpoint_dir) if config.resume else None
    if config.resume and resume_from is None:
        logger.warning("resume=True but no checkpoint in %s: starting fresh", setup.checkpoint_dir)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as error:
        stats = memory_stats("at out-of-memory")
        raise TrainingError(
            f"GPU out of memory at step {trainer.state.global_step}: {stats}. Batch "
            f"{trainer.args.per_device_train_batch_size} x {config.max_seq_length} tokens. Lower "
            "batch_size or max_seq_length, or set auto_batch=True (pre-flight measures the "
            f"worst case before step 1). ({error})"
        ) from None
    finally:
        if setup.compiled_layers:
            from lowres_ft.backends.hf import set_recompute_budget, uncompile_decoder_layers

            uncompile_decoder_layers(setup.model)
            set_recompute_budget(1.0)  # torch's default again, for what else the process compiles
    seconds = time.perf_counter() - started
    from lowres_ft.callbacks import NanGuard

    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NanGuard))
    if guard.reason:
        raise TrainingError(
            f"training stopped: {guard.reason}. The last good checkpoint is "
            f"{latest_checkpoint(setup.checkpoint_dir)}; lower learning_rate, or use "
            "precision='fp32'/'bf16' if fp16 overflowed, and resume=True."
        )
    if config.eval_steps == 0 and setup.eval_dataset is not None and len(setup.eval_dataset):
        trainer.evaluate()
    setup.memory.append(memory_stats("end of training"))
    return save_results(setup, seconds)


def save_results(setup: TrainingSetup, seconds: float) -> TrainResult:
    config, trainer = setup.config, setup.trainer
    run_dir = Path(config.run_dir)
    adapter_dir = run_dir / ADAPTER_DIR
    main = is_main_process()
    if main:  # every process holds the same adapter after data-parallel training
        trainer.model.save_pretrained(adapter_dir)
        setup.tokenizer.save_pretrained(adapter_dir)
    history = trainer.state.log_history
    train_losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    eval_losses = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    metrics = read_metrics(run_dir)
    speeds = [m["tokens_per_second"] for m in metrics if m.get("tokens_per_second")]
    peak = max((m.get("memory_peak_gib", 0.0) for m in metrics), default=0.0)
    result = TrainResult(
        str(run_dir),
        str(adapter_dir),
        trainer.state.global_step,
        "",
        round(seconds, 1),
        train_losses[-1][1] if train_losses else None,
        eval_losses,
        round(sorted(speeds)[len(speeds) // 2], 1) if speeds else 0.0,
        peak,
    )
    experiment = {
        "result": result.to_json(),
        "backend": str(setup.choice),
        "hardware": str(setup.hardware),
        "footprint": setup.footprint,
        "stop_contract": setup.stop_contract,
        "gradient_checkpointing": setup.checkpointing,
        "memory": [m.to_json() for m in setup.memory],
        "train_losses": train_losses,
        "eval_losses": eval_losses,
        "learning_rates": [
            (h["step"], h["learning_rate"]) for h in history if "learning_rate" in h
        ],
        "log": metrics,
    }
    if main:
        (run_dir / EXPERIMENT_FILE).write_text(json.dumps(experiment, indent=2) + "\n", "utf-8")
        plot_losses(train_losses, eval_losses).savefig(run_dir / LOSS_PNG, dpi=100)
    return result


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def plot_losses(train_losses: list, eval_losses: list) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5))
    axes = figure.subplots()
    if train_losses:
        axes.plot(*zip(*train_losses, strict=True), label="train loss", color="#4c72b0")
    if eval_losses:
        axes.plot(*zip(*eval_losses, strict=True), "o-", label="validation loss", color="#dd8452")
    axes.set(xlabel="step", ylabel="loss (replies only)", title="Loss")
    axes.legend()
    figure.tight_layout()
    return figure


def train(config: RunConfig) -> TrainResult:
    """The whole stage: set up, pre-flight, train, save. Used by the CLI and tests."""
    setup = setup_training(config)
    result = preflight(setup)
    logger.info("%s", result)
    return run_training(setup, result)
