"""Training on a 2-layer random-weight Llama (vocabulary 1,000, a BPE trained on real Bengali):
the backend and precision policy, reply-only masks, the stop-token contract, pre-flight, the run
folder, and resume after a real SIGKILL."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_copy

from lowres_ft.backends import BackendChoice, Hardware, choose_backend, choose_precision
from lowres_ft.callbacks import NanGuard
from lowres_ft.cli import data_parallel_command
from lowres_ft.config import ConfigError, RunConfig
from lowres_ft.data.format import tokenize_for_training
from lowres_ft.train import (
    USABLE_SHARE,
    Preflight,
    TrainingError,
    _worst_case_batch,
    adapter_dtypes,
    check_stop_contract,
    choose_optimizer,
    fit_checkpointing,
    keep_adapters_in_fp32,
    latest_checkpoint,
    liger_kernel_config,
    preflight,
    read_metrics,
    recompute_budget,
    run_training,
    set_gradient_checkpointing,
    setup_training,
    sparsest_checkpointing,
    train,
    use_compiled_layers,
    use_liger,
    use_packing,
)

T4 = Hardware("cuda", "Tesla T4", (7, 5), 15.0, 1)
P100 = Hardware("cuda", "Tesla P100-PCIE-16GB", (6, 0), 16.0, 1)
L4 = Hardware("cuda", "NVIDIA L4", (8, 9), 22.5, 1)
A100 = Hardware("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 39.6, 1)
H100 = Hardware("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 79.1, 1)
CPU = Hardware("cpu", "x86_64")


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [(T4, "fp16"), (P100, "fp16"), (L4, "bf16"), (A100, "bf16"), (H100, "bf16"), (CPU, "fp32")],
    ids=["T4", "P100", "L4", "A100", "H100", "CPU"],
)
def test_precision_policy_follows_compute_capability(hardware, expected):
    assert choose_precision(hardware) == expected


def test_bf16_on_a_t4_is_refused_because_it_is_only_emulated():
    with pytest.raises(ConfigError, match="emulates bf16"):
        choose_precision(T4, "bf16")


def test_cpu_gets_lora_in_fp32_and_is_told_why():
    choice = choose_backend(RunConfig(), CPU)
    assert (choice.name, choice.precision, choice.load_in_4bit) == ("cpu", "fp32", False)
    assert "no CUDA GPU" in choice.reason


def test_asking_for_a_gpu_backend_without_a_gpu_says_so():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        choose_backend(RunConfig(backend="hf"), CPU)


def test_a_gpu_without_unsloth_falls_back_to_hf_and_says_why():
    # This machine has neither unsloth nor bitsandbytes: the real imports fail.
    choice = choose_backend(RunConfig(), T4)
    assert choice.name == "hf" and choice.precision == "fp16"
    assert "unsloth does not import" in choice.reason
    assert "bitsandbytes does not import" in choice.reason and not choice.load_in_4bit


def test_unsloth_is_not_tried_on_a_p100():
    choice = choose_backend(RunConfig(), P100)
    assert choice.name == "hf" and "compute < 7.0" in choice.reason


def test_loss_mask_covers_replies_and_their_end_token_only(shared_data):
    from lowres_ft.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    row = json.loads((shared_data / "bn_instruct/bn_instruct.jsonl").open().readline())
    record = {
        "messages": [
            {"role": "system", "content": "তুমি একজন গণিত শিক্ষক।"},
            {"role": "user", "content": row["instruction"]},
            {"role": "assistant", "content": row["output"]},
        ]
    }
    encoded = tokenize_for_training(record, tokenizer)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    ignored = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert trained == row["output"] + "<|im_end|>"
    assert row["instruction"] in ignored and "গণিত শিক্ষক" in ignored
    assert row["output"] not in ignored


def test_stop_contract_refuses_pad_equal_to_eos(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    dataset = _one_row_dataset(tokenizer)
    assert check_stop_contract(tokenizer, dataset)["pad"] == "<|endoftext|>"
    tokenizer.pad_token = tokenizer.eos_token
    with pytest.raises(TrainingError, match="equal to EOS"):
        check_stop_contract(tokenizer, dataset)


def _one_row_dataset(tokenizer):
    import datasets

    row = tokenize_for_training(
        {
            "messages": [
                {"role": "user", "content": "প্রশ্ন"},
                {"role": "assistant", "content": "উত্তর"},
            ]
        },
        tokenizer,
    )
    return datasets.Dataset.from_list([row])


def test_adapters_are_cast_back_to_fp32_under_the_t4_policy(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    for parameter in model.parameters():  # what TRL does to a quantized model's adapters
        if parameter.requires_grad:
            parameter.data = parameter.data.to(torch.bfloat16)
    keep_adapters_in_fp32(model, BackendChoice("hf", "fp16", True, "T4 policy"))
    assert adapter_dtypes(model) == {"float32"}
    keep_adapters_in_fp32(model, BackendChoice("hf", "bf16", True, "A100 policy"))
    assert adapter_dtypes(model) == {"float32"}  # bf16 policy leaves them as they are


def test_training_leaves_a_complete_run_folder(prepared_run, tmp_path):
    config = run_copy(
        prepared_run,
        tmp_path / "run",
        max_steps=8,
        logging_steps=2,
        save_steps=4,
        eval_steps=4,
        learning_rate=1e-3,
    )
    result = train(config)
    run = Path(config.run_dir)
    assert result.global_step == 8
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 1000
    assert (run / "adapter" / "tokenizer.json").exists()
    experiment = json.loads((run / "experiment.json").read_text())
    assert [s for s, _ in experiment["train_losses"]] == [1, 2, 4, 6, 8]
    assert [s for s, _ in experiment["eval_losses"]] == [0, 4, 8]
    assert all(math.isfinite(loss) for _, loss in experiment["train_losses"])
    assert experiment["stop_contract"]["eos"] == "<|im_end|>"
    assert "cpu" in experiment["backend"]
    assert (run / "loss.png").stat().st_size > 5000
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"]
    assert all(
        row["tokens_per_second"] > 0
        for row in read_metrics(run)
        if "loss" in row and row["step"] > 1
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["max_steps"] == 8


def test_preflight_on_cpu_times_the_worst_case_step(prepared_run, tmp_path):
    setup = setup_training(run_copy(prepared_run, tmp_path / "run", batch_size=2))
    result = preflight(setup)
    assert result.fits and result.sequence_length == 128 and result.batch_size == 2
    assert result.step_seconds > 0 and "steps planned" in result.advice


def test_preflight_steps_in_training_mode_whatever_mode_it_finds(prepared_run, tmp_path):
    """Unsloth's training step does not call model.train(); the pre-flight sets the mode as
    train() does (Unsloth: for_training, which arms its gradient checkpointing)."""
    setup = setup_training(run_copy(prepared_run, tmp_path / "run", batch_size=2))
    trainer, modes = setup.trainer, []
    step = trainer.training_step

    def recording_step(model, *args, **kwargs):
        modes.append(model.training)
        return step(model, *args, **kwargs)

    trainer.training_step = recording_step
    setup.model.eval()
    preflight(setup)
    assert modes == [True] and setup.model.training


def test_sparsest_checkpointing_that_fits_is_chosen_from_the_two_measured_peaks():
    # Llama-3.2-1B, 4 x 2,048 tokens, on an H200: 12.25 GiB predicted without checkpointing,
    # 2.45 with all 16 layers checkpointed, so each checkpointed layer frees about 0.61 GiB.
    assert sparsest_checkpointing(16, 12.25, 2.45, usable=12.0) == 16  # one layer is enough
    assert sparsest_checkpointing(16, 12.25, 2.45, usable=8.0) == 2  # 8 of 16: 7.35 GiB
    assert sparsest_checkpointing(16, 12.25, 2.45, usable=3.0) == 1  # 15 layers would not do
    assert sparsest_checkpointing(16, math.inf, 2.45, usable=8.0) == 1  # no peak to go by


def test_recompute_budget_follows_the_line_between_the_measured_peaks_within_limits():
    # Llama-3.1-8B, 2 x 2,048 tokens: 23.2 GiB with nothing recomputed, 7.4 with every layer
    assert recompute_budget(23.2, 7.4, usable=14.25) == 0.35  # a T4: 12.7 GiB measured at 0.3
    assert recompute_budget(23.2, 7.4, usable=22.0) == 0.5  # little to save: at most 0.5
    assert recompute_budget(23.2, 7.4, usable=8.0) == 0.15  # much to save: at least 0.15
    assert recompute_budget(math.inf, 7.4, usable=14.25) == 0.15  # out of memory without


@pytest.fixture
def recompute_budget_put_back():
    """torch.compile's activation budget is process-wide: back to its value after the test."""
    import torch._functorch.config as functorch_config

    with functorch_config.patch(activation_memory_budget=1.0):
        yield functorch_config


@pytest.mark.parametrize(
    ("peaks", "usable", "compiled", "lean", "stride", "chosen", "flags", "budget"),
    [
        ([12, 8, 4], 13.0, 0, None, None, "off", [False, False], 1.0),
        ([12, 8, 4], 8.0, 0, None, None, "1 of 2 layers, one in 2", [True, False], 1.0),
        ([12, 8, 4], 5.0, 0, None, None, "all 2 layers", [True, True], 1.0),
        ([12, 9, 4], 8.0, 0, None, None, "all 2 layers", [True, True], 1.0),  # 1 predicted to fit
        ([12, 8, 4], 8.0, 2, 7.0, None, "off; the compiled layers keep 40%", [False, False], 0.4),
        ([12, 8, 4], 5.0, 2, 4.5, None, "off; the compiled layers keep 15%", [False, False], 0.15),
        ([12, 8, 4], 8.0, 2, 9.0, None, "all 2 layers", [True, True], 1.0),  # lean does not fit
        # one layer in 3 or fewer predicted to fit: cheaper than a budget on compiled layers too
        ([12, 8, 4], 8.0, 2, 7.0, 3, "1 of 2 layers, one in 3", [True, False], 1.0),
    ],
)
def test_auto_checkpointing_recomputes_the_least_that_fits(
    prepared_run,
    tmp_path,
    monkeypatch,
    recompute_budget_put_back,
    peaks,
    usable,
    compiled,
    lean,
    stride,
    chosen,
    flags,
    budget,
):
    """The search of gradient_checkpointing='auto' on a real model and trainer, with the GPU's
    measured peak stood in for (there is no GPU here): `peaks[k]` GiB with k layers
    checkpointed, `lean` GiB with none and compiled layers keeping less than all their
    activations; `stride`, where given, stands in for the sparsest stride predicted to fit (on
    two layers it can only be 2). It must end with the layers, the trainer's arguments and
    torch.compile's activation budget as it says."""
    import lowres_ft.train as train_module
    from lowres_ft.backends.hf import decoder_layers

    functorch_config = recompute_budget_put_back
    setup = setup_training(run_copy(prepared_run, tmp_path / "run", batch_size=2))
    setup.compiled_layers = compiled  # the decision only; these layers stay eager
    layers = decoder_layers(setup.model)

    def peak_of_the_checkpointed_layers(setup, batch, accumulation):
        peak = peaks[sum(layer.gradient_checkpointing for layer in layers)]
        if functorch_config.activation_memory_budget < 1.0:
            peak = lean
        card = usable / USABLE_SHARE
        return Preflight(
            batch, accumulation, 128, peak, 1, 0, peak, card, usable, peak <= usable, 0, ""
        )

    monkeypatch.setattr(train_module, "_measure", peak_of_the_checkpointed_layers)
    if stride:
        monkeypatch.setattr(train_module, "sparsest_checkpointing", lambda *args: stride)
    result = fit_checkpointing(setup, 2, 1)
    assert result.fits and result.gradient_checkpointing.startswith(chosen)
    assert setup.checkpointing == result.gradient_checkpointing
    assert [layer.gradient_checkpointing for layer in layers] == flags
    assert setup.trainer.args.gradient_checkpointing == any(flags)
    assert functorch_config.activation_memory_budget == budget


@pytest.mark.parametrize(("every_n_layers", "forwards"), [(0, [1, 1]), (1, [2, 2]), (2, [2, 1])])
def test_the_layers_checkpointing_is_set_on_recompute_their_forward_in_training(
    prepared_run, tmp_path, every_n_layers, forwards
):
    """The pre-flight sets checkpointing per layer after the trainer is built; train(), which
    enables checkpointing from its arguments, must keep that choice: in one training step only
    the checkpointed layers run their forward twice."""
    from lowres_ft.backends.hf import decoder_layers

    config = run_copy(prepared_run, tmp_path / "run", batch_size=2, max_steps=1)
    setup = setup_training(config)
    layers = decoder_layers(setup.model)
    calls = [0] * len(layers)

    def count(index):
        def hook(module, args, kwargs):
            calls[index] += module.training  # the evaluation before step 1 does not count

        return hook

    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(count(index), with_kwargs=True)
    set_gradient_checkpointing(setup, every_n_layers)
    setup.trainer.train()
    assert calls == forwards


def test_nan_guard_stops_without_saving_the_bad_state():
    from transformers import TrainerControl, TrainerState

    guard, state = NanGuard(), TrainerState()
    for step, loss in enumerate([2.0, 1.9, 1.8, 1.7], start=1):
        state.global_step = step
        control = TrainerControl(should_save=True)
        guard.on_log(None, state, control, logs={"loss": loss})
        assert not control.should_training_stop
    state.global_step = 5
    control = TrainerControl(should_save=True)
    guard.on_log(None, state, control, logs={"loss": float("nan")})
    assert control.should_training_stop and not control.should_save
    assert "nan at step 5" in guard.reason


def test_a_nan_loss_in_real_training_stops_the_run_and_keeps_the_last_good_checkpoint(
    prepared_run, tmp_path
):
    """The Trainer's own NaN filter would log the average of earlier losses instead, and the guard
    would never see the NaN: the run has to log the loss as it is."""
    from transformers import TrainerCallback

    class PoisonAdapter(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(math.nan)

    config = run_copy(
        prepared_run, tmp_path / "run", max_steps=8, logging_steps=1, save_steps=2, eval_steps=0
    )
    setup = setup_training(config)
    setup.trainer.add_callback(PoisonAdapter())
    with pytest.raises(TrainingError, match="loss is nan at step 5") as error:
        run_training(setup)
    assert "checkpoint-4" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint-6").exists()


def test_nan_guard_catches_an_exploding_loss():
    from transformers import TrainerControl, TrainerState

    guard, state, control = NanGuard(), TrainerState(), TrainerControl()
    for loss in [2.0, 1.9, 1.8, 250.0]:
        guard.on_log(None, state, control, logs={"loss": loss})
    assert control.should_training_stop and "exploded" in guard.reason


def test_training_resumes_after_sigkill_to_the_same_final_step(prepared_run, tmp_path):
    run_dir = tmp_path / "killed"
    config = run_copy(
        prepared_run,
        run_dir,
        max_steps=150,
        logging_steps=1,
        save_steps=10,
        eval_steps=0,
        save_total_limit=3,
        learning_rate=1e-3,
    )
    config.save()
    command = [sys.executable, "-m", "lowres_ft.cli", "train", "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while latest_checkpoint(run_dir / "checkpoints") is None or not latest_checkpoint(
        run_dir / "checkpoints"
    ).endswith(("-20", "-30", "-40")):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(row["step"] for row in read_metrics(run_dir))
    assert killed_at < 150
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    losses = [row for row in read_metrics(run_dir) if "loss" in row]
    assert [row["step"] for row in losses] == list(range(1, 151))  # continuous, no repeats
    state = json.loads(
        (run_dir / "checkpoints" / "checkpoint-150" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == 150
    experiment = json.loads((run_dir / "experiment.json").read_text())
    assert experiment["result"]["global_step"] == 150


def test_a_trained_adapter_stops_at_the_end_of_its_reply(tiny_model, tmp_path):
    """Reply-only loss includes <|im_end|>: after training, generation ends there instead of
    running to the length limit (a mask that dropped EOS, or pad == EOS, would break this)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lowres_ft.generate import GenerationSettings, generate_reply

    chat = [
        {"role": "user", "content": "নমস্কার, কেমন আছেন?"},
        {"role": "assistant", "content": "ভালো আছি, ধন্যবাদ।"},
    ]
    run_dir = tmp_path / "stop"
    (run_dir / "data").mkdir(parents=True)
    for name in ("train.jsonl", "validation.jsonl"):
        rows = [
            json.dumps({"source": f"x:{i}", "messages": chat}, ensure_ascii=False)
            for i in range(16)
        ]
        (run_dir / "data" / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = RunConfig(
        run_dir=str(run_dir),
        model_name=str(tiny_model),
        max_steps=60,
        lora_r=32,
        lora_alpha=64,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        eval_steps=0,
        eval_max_rows=2,
        logging_steps=20,
        save_steps=60,
        max_seq_length=64,
    )
    result = train(config)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), result.adapter_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(result.adapter_dir)
    reply = generate_reply(model, tokenizer, chat[:1], GenerationSettings(max_new_tokens=40))
    assert reply.stopped_at_eos and reply.new_tokens < 40, reply
    assert reply.text == "ভালো আছি, ধন্যবাদ।"


def test_liger_kernels_are_used_only_on_the_transformers_gpu_backend():
    hf = BackendChoice("hf", "bf16", True, "A100")
    assert not use_liger(RunConfig(), BackendChoice("cpu", "fp32", False, "CPU"))
    assert not use_liger(RunConfig(), BackendChoice("unsloth", "bf16", True, "own kernels"))
    assert not use_liger(RunConfig(liger="off"), hf)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        use_liger(RunConfig(liger="on"), BackendChoice("cpu", "fp32", False, "CPU"))
    if importlib.util.find_spec("liger_kernel") is None:  # the CPU test machine
        assert not use_liger(RunConfig(), hf)  # auto: quietly without
        with pytest.raises(ConfigError, match="pip install liger-kernel"):
            use_liger(RunConfig(liger="on"), hf)
    else:
        assert use_liger(RunConfig(), hf)


def test_compiled_layers_leave_norms_swiglu_and_rope_to_inductor_and_keep_the_fused_loss():
    """Liger 0.8's RoPE runs through a compiler-disabled dispatcher (a graph break per layer), and
    its RMSNorm and SwiGLU save tensors the partitioner cannot recompute; its loss stays on."""
    kernels = liger_kernel_config(compiled_layers=True)
    assert kernels == {"rope": False, "rms_norm": False, "swiglu": False}
    assert "fused_linear_cross_entropy" not in kernels  # Liger's default: on
    assert liger_kernel_config(compiled_layers=False) is None


def test_frozen_weights_go_back_to_bf16_after_kbit_preparation(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lowres_ft.backends.hf import keep_frozen_weights_in

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    for parameter in model.parameters():  # as prepare_model_for_kbit_training leaves them
        parameter.requires_grad = False
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    keep_frozen_weights_in(model, torch.bfloat16)
    frozen = {str(p.dtype) for p in model.parameters() if not p.requires_grad}
    assert frozen == {"torch.bfloat16"}
    assert adapter_dtypes(model) == {"float32"}  # the trained LoRA weights keep fp32


def test_gpus_flag_relaunches_the_same_command_once_per_gpu():
    argv = ["train", "--run-dir", "runs/x", "--gpus", "2", "--max-steps", "5"]
    command = data_parallel_command(argv, 2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert command[5:] == [
        "-m",
        "lowres_ft.cli",
        "train",
        "--run-dir",
        "runs/x",
        "--max-steps",
        "5",
    ]
    assert "--gpus" not in data_parallel_command(["train", "--gpus=2"], 2)


def test_data_parallel_training_writes_one_log_and_one_adapter(prepared_run, tmp_path):
    """Two processes (gloo on the CPU, NCCL on GPUs) train one run folder: only rank 0 writes."""
    run_dir = tmp_path / "ddp"
    config = run_copy(
        prepared_run, run_dir, max_steps=4, logging_steps=1, save_steps=100, eval_steps=0
    )
    config.save()
    command = [sys.executable, "-m", "lowres_ft.cli", "train", "--run-dir", str(run_dir)]
    done = subprocess.run([*command, "--gpus", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "launching: -m torch.distributed.run" in done.stdout
    assert done.stdout.count('"global_step": 4') == 1  # the result is printed once
    steps = [row["step"] for row in read_metrics(run_dir) if "loss" in row]
    assert steps == [1, 2, 3, 4]  # one line per step, not one per process
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (BackendChoice("cpu", "fp32", False, "CPU"), "adamw_torch"),
        (BackendChoice("hf", "fp16", True, "T4"), "paged_adamw_8bit"),
        (BackendChoice("unsloth", "fp16", True, "T4"), "paged_adamw_8bit"),
        (BackendChoice("unsloth", "bf16", True, "H100"), "adamw_torch_fused"),
        (BackendChoice("hf", "bf16", True, "A100"), "adamw_torch_fused"),
    ],
)
def test_optimizer_is_paged_8bit_on_16gb_fp16_cards_and_fused_elsewhere(choice, expected):
    assert choose_optimizer(RunConfig(), choice) == expected
    assert choose_optimizer(RunConfig(optim="paged_adamw_32bit"), choice) == (
        "adamw_torch" if choice.name == "cpu" else "paged_adamw_32bit"
    )


def _two_rows_alone_and_packed(model, generator):
    """Logits of two rows run alone, and of the same rows joined into one packed row."""
    first = torch.randint(0, 1000, (1, 37), generator=generator)
    second = torch.randint(0, 1000, (1, 53), generator=generator)
    positions = torch.cat([torch.arange(37), torch.arange(53)]).unsqueeze(0)
    joined = torch.cat([first, second], dim=1)
    alone = torch.cat([model(input_ids=r, use_cache=False).logits for r in (first, second)], 1)
    return alone, joined, positions


def test_packed_rows_do_not_attend_across_each_other_in_training(tiny_model):
    """What padding-free packing relies on: with positions restarting at each row and no cache
    (training), transformers' SDPA gives each row exactly the logits it gets alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    with torch.no_grad():
        alone, joined, positions = _two_rows_alone_and_packed(model, torch.manual_seed(0))
        packed = model(input_ids=joined, position_ids=positions, use_cache=False).logits
        unmasked = model(input_ids=joined, use_cache=False).logits
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(unmasked[:, 37:], alone[:, 37:], atol=1e-2)  # the test can fail


def test_packing_follows_the_backend_and_the_row_lengths():
    unsloth = BackendChoice("unsloth", "bf16", True, "H100")
    hf = BackendChoice("hf", "fp16", True, "T4")
    cpu = BackendChoice("cpu", "fp32", False, "CPU")
    config = RunConfig(max_seq_length=2048)
    real_bengali = [512, 556, 841, 300, 1873]  # median, mean, p90 and max of bn_instruct
    assert use_packing(config, unsloth, real_bengali)  # its packing costs little
    assert not use_packing(config, unsloth, [2048] * 8)  # full rows: padded ran 1.32x faster
    assert use_packing(config, unsloth, [2048, 1000, 2048])  # a quarter of the steps' room empty
    assert use_packing(config, hf, real_bengali)  # mostly short rows: steps would be half empty
    assert not use_packing(config, hf, [2048, 3000, 1900])  # full rows: the block mask only costs
    assert not use_packing(config, cpu, real_bengali)  # a fixed-step CPU run would take longer
    assert not use_packing(RunConfig(packing="off"), unsloth, real_bengali)
    assert use_packing(RunConfig(packing="on"), cpu, [2048])


def test_rows_are_cut_to_max_seq_length_before_the_trainer_sees_them(
    prepared_run, tmp_path, caplog
):
    """Unsloth's padded SFTTrainer passed rows longer than max_seq_length through, and its loss
    indexed past the cut ids; every backend now gets rows cut to the limit, ids and masks alike,
    and the log says how many were cut."""
    config = run_copy(prepared_run, tmp_path / "run", packing="off", max_steps=1, eval_steps=0)
    with caplog.at_level("WARNING", logger="lowres_ft.train"):
        setup = setup_training(config)
    lengths = [len(ids) for ids in setup.train_dataset["input_ids"]]
    masks = [len(mask) for mask in setup.train_dataset["assistant_masks"]]
    assert lengths == masks and max(lengths) == 128
    assert "longer than max_seq_length=128 tokens: cut to it" in caplog.text
    for batch in setup.trainer.get_train_dataloader():
        assert batch["input_ids"].shape == batch["labels"].shape
        assert batch["input_ids"].shape[1] <= 128


def test_packed_training_runs_and_its_preflight_sees_one_joined_row(prepared_run, tmp_path):
    """At 128 tokens most of these rows' replies lie past the limit: packed batches of such rows
    would train nothing and log a loss of 0/0, so they are left out before packing."""
    config = run_copy(
        prepared_run, tmp_path / "run", packing="on", batch_size=2, max_steps=2, eval_steps=0
    )
    setup = setup_training(config)
    assert setup.packing
    assert len(setup.train_dataset) < 100  # of 190 rows
    trained = [int((b["labels"] != -100).sum()) for b in setup.trainer.get_train_dataloader()]
    assert min(trained) > 0
    assert setup.model.get_base_model().config._attn_implementation == "sdpa"  # its block mask
    batch = _worst_case_batch(setup, 2)
    assert batch["input_ids"].shape == (1, 2 * 128) and "attention_mask" not in batch
    assert batch["position_ids"][0, 0] == 0 and batch["position_ids"].max() < 128
    check = preflight(setup)
    assert check.fits and check.step_seconds > 0
    result = run_training(setup, check)
    assert result.global_step == 2 and math.isfinite(result.train_loss)


def test_layers_are_compiled_on_the_hf_gpu_backend_only():
    hf, cpu = BackendChoice("hf", "bf16", True, "A100"), BackendChoice("cpu", "fp32", False, "")
    unsloth = BackendChoice("unsloth", "bf16", True, "A100")
    assert use_compiled_layers(RunConfig(), hf)
    assert not use_compiled_layers(RunConfig(), cpu) and not use_compiled_layers(
        RunConfig(), unsloth
    )
    assert not use_compiled_layers(RunConfig(compile_layers="off"), hf)
    with pytest.raises(ConfigError, match="Unsloth compiles its own"):
        use_compiled_layers(RunConfig(compile_layers="on"), unsloth)


def test_compiled_layers_train_as_the_plain_ones_and_go_back_to_eager(tiny_model):
    """Compiled decoder layers under LoRA and gradient checkpointing, as the HF backend trains:
    the same loss and gradients as eager layers; afterwards the layers run eager again."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lowres_ft.backends.hf import compile_decoder_layers, uncompile_decoder_layers

    def lora_model():
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        return get_peft_model(model, lora).train()

    from torch._dynamo.utils import counters

    eager, compiled = lora_model(), lora_model()
    assert compile_decoder_layers(compiled) == 2
    ids = torch.randint(0, 1000, (2, 24), generator=torch.manual_seed(1))
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    losses = [m(input_ids=ids, labels=ids).loss for m in (eager, compiled)]
    assert counters["stats"]["unique_graphs"] > graphs  # compiled, not fallen back to eager
    assert sum(counters["graph_break"].values()) == breaks  # each layer one graph
    for loss in losses:
        loss.backward()
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    grads = [[p.grad for p in m.parameters() if p.requires_grad] for m in (eager, compiled)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads, strict=True))
    uncompile_decoder_layers(compiled)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in compiled.modules())


def test_a_recompute_budget_has_compiled_layers_keep_less_for_the_backward_same_gradients(
    tiny_model,
):
    """set_recompute_budget reaches layers that were compiled already: they recompile, keep less
    of their activations for the backward (counted as autograd saves them) and give the same
    gradients; torch's default afterwards keeps everything again."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lowres_ft.backends.hf import compile_decoder_layers, set_recompute_budget

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.enable_input_require_grads()
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, lora).train()
    compile_decoder_layers(model)
    ids = torch.randint(0, 1000, (2, 64), generator=torch.manual_seed(1))

    def saved_bytes_and_gradients() -> tuple[int, list]:
        sizes = []

        def keep(tensor):
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        model.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return sum(sizes), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    try:
        kept, gradients = saved_bytes_and_gradients()
        set_recompute_budget(0.3)
        lean, lean_gradients = saved_bytes_and_gradients()
    finally:
        set_recompute_budget(1.0)
    again, _ = saved_bytes_and_gradients()
    assert lean < 0.8 * kept and again == kept
    assert all(
        torch.allclose(a, b, atol=1e-5) for a, b in zip(gradients, lean_gradients, strict=True)
    )


def test_unsloth_qat_lookup_is_settled_only_while_torchao_qat_is_not_loaded(monkeypatch):
    # The lookup Unsloth's compiled blocks trace on every call (a walk of sys.modules that fails
    # their compile when the dict changes meanwhile); its module is stood in for: no Unsloth here.
    from types import ModuleType

    from lowres_ft.backends.unsloth import QAT_MODULE, settle_fake_quant_lookup

    fast_lora = ModuleType("unsloth.kernels.fast_lora")
    fast_lora._FORWARD_FAKE_QUANT_LINEARS = None
    monkeypatch.setitem(sys.modules, QAT_MODULE, ModuleType(QAT_MODULE))
    assert not settle_fake_quant_lookup(fast_lora)  # QAT loaded: Unsloth's own lookup stays
    assert fast_lora._FORWARD_FAKE_QUANT_LINEARS is None
    monkeypatch.delitem(sys.modules, QAT_MODULE)
    assert settle_fake_quant_lookup(fast_lora)
    assert fast_lora._FORWARD_FAKE_QUANT_LINEARS == ()
    assert not settle_fake_quant_lookup(fast_lora)  # settled once
