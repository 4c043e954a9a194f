"""Export: the merged model computes what base + adapter computed, the GGUF files written by
llama.cpp's own converter hold the merged weights and answer alike, the Modelfile speaks the
model's chat format, the model card reports the run folder, and a hub push never leaks the
token.

The GGUF tests use the embedded SmolLM2-135M: llama.cpp recognises a tokenizer by hashing its
pre-tokenizer's output, and the tests' tiny BPE is unknown to it (one test proves the error
says so). The converter comes once from the llama-cpp-python source distribution on PyPI and is
cached; nothing else needs the network.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lowres_ft import export
from lowres_ft.config import RunConfig
from lowres_ft.data.prepare import prepare_data
from lowres_ft.data.report import build_report
from lowres_ft.evaluate import evaluate_run
from lowres_ft.export import (
    ExportError,
    check_gguf,
    export_gguf,
    export_run,
    find_llama_quantize,
    llama_cpp_dir,
    merge_adapter,
    push_plan,
    push_to_hub,
    write_model_card,
    write_modelfile,
)
from lowres_ft.models import EOS_TOKEN, PAD_TOKEN, resolve_model
from lowres_ft.train import train

BENGALI_PROMPT = "বাংলাদেশের রাজধানী কোথায়?"
FAKE_TOKEN = "hf_lowresFakeToken0123456789abcdefXYZ"


class RefusingHub:
    """Stands in for huggingface_hub.HfApi where nothing may be sent."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("the hub was contacted without a token")


def without_tokens(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """No token in the environment, nor one stored by `huggingface_hub.login()`."""
    for name in export.TOKEN_ENV:
        patch.delenv(name, raising=False)
    patch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(folder / "no-token"))


def random_adapter(model_dir: Path | str, adapter_dir: Path, scale: float = 1.0) -> Path:
    """A LoRA adapter whose B matrices are random (not zero), so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)  # the same adapter every run
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(scale)
    peft_model.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(adapter_dir)
    return adapter_dir


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(BENGALI_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits[0].float()


# --- merge ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory, tiny_model) -> RunConfig:
    run_dir = tmp_path_factory.mktemp("tiny_lora")
    random_adapter(tiny_model, run_dir / "adapter")
    return RunConfig(run_dir=str(run_dir), model_name=str(tiny_model))


def test_merged_model_gives_the_logits_of_base_plus_adapter(tiny_lora, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = merge_adapter(tiny_lora, out=tmp_path / "merged", dtype="fp32")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    base_logits = logits(base, tokenizer)
    with_adapter = PeftModel.from_pretrained(base, tiny_lora.adapter_path())
    expected = logits(with_adapter, tokenizer)
    got = logits(AutoModelForCausalLM.from_pretrained(merged), tokenizer)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert (expected - base_logits).abs().max() > 0.05  # the adapter changed the model


def test_merge_saves_16_bit_weights_and_the_tokens_that_end_a_reply(tiny_lora, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = merge_adapter(tiny_lora, out=tmp_path / "fp32", dtype="fp32")
    half = merge_adapter(tiny_lora, out=tmp_path / "fp16")  # fp16: the default
    with safe_open(half / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()}  # noqa: SIM118 (not a dict) == {torch.float16}
    saved = json.loads((half / "config.json").read_text())
    assert "quantization_config" not in saved and not (half.parent / "fp16.partial").exists()
    tokenizer = AutoTokenizer.from_pretrained(half)
    assert (tokenizer.eos_token, tokenizer.pad_token) == (EOS_TOKEN, PAD_TOKEN)
    generation = json.loads((half / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert generation["pad_token_id"] == tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    model16 = AutoModelForCausalLM.from_pretrained(half, dtype=torch.float32)
    model32 = AutoModelForCausalLM.from_pretrained(full)
    assert torch.allclose(logits(model16, tokenizer), logits(model32, tokenizer), atol=2e-2)


def test_a_base_stored_in_4_bit_is_refused_with_the_fix(tiny_lora, tiny_model, tmp_path):
    quantized = tmp_path / "model-bnb-4bit"
    shutil.copytree(tiny_model, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    run = RunConfig(run_dir=tiny_lora.run_dir, model_name=str(quantized))
    with pytest.raises(ExportError, match="16-bit original"):
        merge_adapter(run, out=tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_without_an_adapter_says_to_train_first(tiny_model, tmp_path):
    with pytest.raises(ExportError, match="run notebooks/02_train.ipynb"):
        merge_adapter(RunConfig(run_dir=str(tmp_path), model_name=str(tiny_model)))


# --- GGUF, Modelfile and card on the embedded model ----------------------------------------------


@pytest.fixture(scope="module")
def smol_export(tmp_path_factory):
    """export_run on SmolLM2-135M with a random adapter, a hub repo named and no token."""
    run_dir = tmp_path_factory.mktemp("smol") / "run"
    random_adapter(resolve_model("embedded"), run_dir / "adapter", scale=0.05)
    config = RunConfig(
        run_dir=str(run_dir), model_name="embedded", hub_repo_id="someone/smollm2-bn"
    )
    with pytest.MonkeyPatch.context() as patch:
        without_tokens(patch, run_dir)
        patch.setattr("huggingface_hub.HfApi", RefusingHub)
        result = export_run(config, progress=False)
    return config, result


def test_export_run_fills_the_export_folder(smol_export):
    from safetensors import safe_open

    config, result = smol_export
    folder = Path(config.run_dir) / "export"
    assert result.folder == folder and result.merged == folder / "merged"
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    assert set(result.gguf) == {"f16", "q8_0"}
    assert result.gguf["f16"].name == "SmolLM2-135M-Instruct-bn-lowres-ft-f16.gguf"
    assert result.gguf["f16"].stat().st_size > 1.8 * result.gguf["q8_0"].stat().st_size
    if find_llama_quantize() is None:
        assert "llama-quantize" in result.skipped["q4_k_m"]
    assert "no Hugging Face token" in result.skipped["hub"] and result.hub_url is None
    pushed = {item["path"] for item in result.hub_plan}
    assert {
        "README.md",
        "Modelfile",
        result.gguf["q8_0"].name,
        "merged/model.safetensors",
    } <= pushed
    assert "adapter/adapter_model.safetensors" in pushed
    assert not any(path.endswith(".log") for path in pushed)
    assert "Model successfully exported" in result.logs["q8_0"].read_text("utf-8")
    key = "model.layers.0.self_attn.q_proj.weight"
    base = Path(resolve_model("embedded")) / "model.safetensors"
    with safe_open(base, "pt") as a, safe_open(result.merged / "model.safetensors", "pt") as b:
        assert (a.get_tensor(key) - b.get_tensor(key).float()).abs().max() > 1e-3
    assert {row["what"] for row in result.table()} >= {"merged model", "GGUF f16", "hub"}


def test_f16_gguf_holds_the_merged_weights_and_answers_the_same(smol_export):
    from transformers import AutoTokenizer

    _, result = smol_export
    check = check_gguf(result.merged, result.gguf["f16"], BENGALI_PROMPT, max_new_tokens=12)
    assert check.max_weight_diff == 0.0
    assert check.same_tokens == check.tokens == 12
    assert check.logits_cosine > 0.99999
    tokenizer = AutoTokenizer.from_pretrained(result.merged)
    assert check.metadata["architecture"] == "llama"
    assert check.metadata["eos_token_id"] == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert check.metadata["padding_token_id"] == tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    assert "<|im_start|>" in check.metadata["chat_template"]


def test_q8_0_gguf_answers_like_the_merged_model(smol_export):
    _, result = smol_export
    check = check_gguf(result.merged, result.gguf["q8_0"], BENGALI_PROMPT, max_new_tokens=12)
    assert 0.0 < check.max_weight_diff < 0.1  # rounded to 8 bits, but close
    assert check.logits_cosine > 0.999
    assert check.same_tokens >= 8


def test_modelfile_speaks_chatml_and_stops_at_the_end_of_a_turn(smol_export):
    config, result = smol_export
    text = result.modelfile.read_text("utf-8")
    source = text.split("\nFROM ", 1)[1].splitlines()[0]
    assert source == f"./{result.gguf['q8_0'].name}"
    assert (result.modelfile.parent / source).exists()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in template
    assert template.endswith("<|im_start|>assistant\n")
    stops = [
        line.split(" ", 2)[2] for line in text.splitlines() if line.startswith("PARAMETER stop")
    ]
    assert stops == ['"<|im_end|>"', '"<|im_start|>"', '"<|endoftext|>"']
    # no system prompt in the run: the one SmolLM2's template adds, which training saw
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text
    assert "PARAMETER temperature 0\n" in text and "PARAMETER repeat_penalty 1.1\n" in text
    assert "PARAMETER num_predict 100\n" in text


def test_modelfile_takes_the_runs_system_prompt_and_sampling(smol_export, tmp_path):
    config, result = smol_export
    sampled = RunConfig(
        **{**config.to_dict(), "system_prompt": "তুমি একজন সহায়ক।", "temperature": 0.7}
    )
    path = write_modelfile(result.gguf["f16"], result.merged, sampled, tmp_path)
    text = path.read_text("utf-8")
    assert 'SYSTEM """তুমি একজন সহায়ক।"""' in text and "PARAMETER temperature 0.7" in text
    source = text.split("\nFROM ", 1)[1].splitlines()[0]  # relative to the Modelfile
    assert (tmp_path / source).resolve() == result.gguf["f16"].resolve()


def test_modelfile_for_a_llama3_template_and_refusal_of_an_unknown_one(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
        " + m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    )
    gguf = tmp_path / "model-q8_0.gguf"
    text = write_modelfile(gguf, tokenizer, None, tmp_path).read_text("utf-8")
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" in text
    assert 'PARAMETER stop "<|eot_id|>"' in text and 'SYSTEM """' not in text  # none added
    tokenizer.chat_template = "{% for m in messages %}### {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ExportError, match="TEMPLATE by hand"):
        write_modelfile(gguf, tokenizer, None, tmp_path)


def test_model_card_says_what_to_run_for_missing_stages(smol_export):
    config, result = smol_export
    card = result.card.read_text("utf-8")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["license"] == "apache-2.0" and front["language"] == ["bn"]
    assert {"lowres-ft", "lora", "gguf"} <= set(front["tags"])
    assert "run notebooks/01_data_prep.ipynb" in card
    assert "No experiment.json" in card and "run notebooks/02_train.ipynb" in card
    assert "Not evaluated yet: run notebooks/03_evaluate.ipynb" in card
    assert "Not included: q4_k_m" in card or find_llama_quantize() is not None
    assert 'subfolder="adapter"' in card and "someone/smollm2-bn" in card
    assert f"ollama create {result.gguf['f16'].name.rsplit('-', 1)[0].lower()}" in card


# --- the model card on a whole run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model, shared_data) -> RunConfig:
    """Real Bengali data prepared, two training steps and an evaluation on the tiny model."""
    from transformers import AutoTokenizer

    config = RunConfig(
        run_dir=str(tmp_path_factory.mktemp("card") / "run"),
        model_name=str(tiny_model),
        data_path=str(shared_data / "bn_instruct/bn_instruct.jsonl"),
        max_rows=120,
        max_seq_length=128,
        max_steps=2,
        eval_steps=0,
        save_steps=50,
        learning_rate=1e-3,
        eval_max_rows=6,
        eval_prompts=3,
        max_new_tokens=6,
    )
    prepared = prepare_data(config, progress=False)
    build_report(prepared, config, AutoTokenizer.from_pretrained(tiny_model))
    train(config)
    evaluate_run(config, progress=False)
    return config


def test_model_card_reports_data_training_and_evaluation(trained_run, tmp_path):
    run = Path(trained_run.run_dir)
    stats = json.loads((run / "data" / "clean_stats.json").read_text())
    scores = json.loads((run / "evaluation" / "metrics.json").read_text())["scores"]
    card = write_model_card(trained_run, out_dir=tmp_path).read_text("utf-8")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "other" and "base_model" not in front  # a local folder
    assert f"Rows read: {stats['read']:,}; kept after cleaning: {stats['kept']:,}" in card
    assert "Tokenizer fertility" in card and "Split:" in card
    assert "r=16, alpha=32, dropout=0.0, targets `all-linear`, rsLoRA off" in card
    assert "Trained 2 steps in" in card and "CPU" in card
    assert "| metric | better | base | fine-tuned |" in card
    tuned = next(s for s in scores if s["name"] == "fine-tuned")
    chrf_row = next(line for line in card.splitlines() if line.startswith("| chrF++"))
    assert chrf_row.endswith(f"| {tuned['chrf_pp']:.4g} |")
    assert f"{tuned['script_share']:.0%} of the fine-tuned model's reply letters" in card
    assert "Not for medical, legal" in card and "Not evaluated yet" not in card


# --- hub -----------------------------------------------------------------------------------------


def test_push_without_a_token_sends_nothing_and_logs_the_plan(tmp_path, monkeypatch, caplog):
    without_tokens(monkeypatch, tmp_path)
    monkeypatch.setattr("huggingface_hub.HfApi", RefusingHub)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "README.md").write_text("card")
    (tmp_path / "gguf-f16.log").write_text("converter output")
    caplog.set_level(logging.INFO, logger="lowres_ft")
    assert push_to_hub(tmp_path, "someone/model") is None
    assert push_plan(tmp_path) == [
        {"path": "README.md", "bytes": 4},
        {"path": "merged/model.safetensors", "bytes": 1000},
    ]
    assert "not pushing 2 files" in caplog.text and "merged/model.safetensors" in caplog.text


class RecordingHub:
    """A local stand-in for huggingface_hub.HfApi that records the calls (the hub is offline)."""

    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", folder_path, repo_id, kwargs))


def test_the_token_is_used_but_never_logged_or_written(tmp_path, monkeypatch, caplog):
    import inspect

    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr("huggingface_hub.HfApi", RecordingHub)
    RecordingHub.calls = []
    (tmp_path / "README.md").write_text("card")
    caplog.set_level(logging.DEBUG)
    url = push_to_hub(tmp_path, "someone/model")
    assert url == "https://huggingface.co/someone/model"
    assert RecordingHub.calls[0] == ("init", FAKE_TOKEN)
    upload = RecordingHub.calls[2]
    assert (
        upload[1:3] == (str(tmp_path), "someone/model") and "*.log" in upload[3]["ignore_patterns"]
    )
    assert RecordingHub.calls[1][2]["private"] is True
    # the calls fit the real HfApi's signatures, so the stand-in proves the real call works
    inspect.signature(HfApi.create_repo).bind(None, "someone/model", **RecordingHub.calls[1][2])
    upload_kwargs = {"folder_path": upload[1], "repo_id": upload[2], **upload[3]}
    inspect.signature(HfApi.upload_folder).bind(None, **upload_kwargs)
    assert FAKE_TOKEN not in caplog.text
    assert all(FAKE_TOKEN not in p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    converter_env = export._converter_env(tmp_path)  # the converter subprocess gets no token
    assert FAKE_TOKEN not in converter_env.values()


# --- the converter -------------------------------------------------------------------------------


def test_converter_is_fetched_once_then_reused_from_the_cache(monkeypatch):
    first = llama_cpp_dir()
    assert (first / "convert_hf_to_gguf.py").exists() and (first / "gguf-py" / "gguf").is_dir()
    assert not (first / "examples").exists()  # only the converter's parts are kept

    def no_network(*args, **kwargs):
        raise AssertionError("pip ran again")

    monkeypatch.setattr(export.subprocess, "run", no_network)
    assert llama_cpp_dir() == first


def test_without_sentencepiece_the_export_says_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_has_sentencepiece", lambda: False)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="pip install sentencepiece"):
        export_gguf(tmp_path, tmp_path / "out", ("f16",))


def test_an_unknown_tokenizer_fails_with_the_log_tail_and_what_to_do(tiny_lora, tmp_path):
    merged = merge_adapter(tiny_lora, out=tmp_path / "merged")
    with pytest.raises(ExportError, match="pre-tokenizer") as error:
        export_gguf(merged, tmp_path, ("f16",), "tiny")
    assert "gguf-f16.log" in str(error.value) and "NotImplementedError" in str(error.value)
    assert not (tmp_path / "tiny-f16.gguf").exists()
