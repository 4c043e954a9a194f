"""Export a trained run: merge the LoRA adapter into a 16-bit base, convert it to GGUF with
llama.cpp's own converter, write an Ollama Modelfile and a model card, and push to the hub.

Everything goes to <run_dir>/export/:
  adapter/              the LoRA adapter with its tokenizer (small; peft loads it on the base)
  merged/               base + adapter as one 16-bit safetensors model, fixed chat tokens
  NAME-f16.gguf, NAME-q8_0.gguf (NAME-q4_k_m.gguf where llama-quantize is found)
  Modelfile             `ollama create name -f Modelfile`
  README.md             the model card
  gguf-<type>.log       what the converter printed for each type (never pushed)

llama.cpp's converter is not on PyPI by itself, but it ships in the llama-cpp-python source
distribution (vendor/llama.cpp). It is fetched once with pip, checked against a pinned hash,
and only the converter, its `conversion` package and its gguf-py are kept in
cache_dir()/llama.cpp/<version>. It runs in a subprocess with that gguf-py first on its path,
so the `gguf` installed here never has to match the converter's.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowres_ft.config import LowresError, RunConfig
from lowres_ft.models import EMBEDDED, EMBEDDED_ID, cache_dir, fix_chat_tokens, resolve_model

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"
MERGED_DIR = "merged"
ADAPTER_DIR = "adapter"
MODELFILE = "Modelfile"
CARD_FILE = "README.md"

# The llama-cpp-python source distribution whose vendored llama.cpp converts to GGUF. Its
# gguf-py is gguf 0.19.0; its converter imports sentencepiece for every Llama-family model.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_ENV = "LOWRES_FT_LLAMA_CPP"  # a llama.cpp checkout to use instead of the download
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
_MARKER = "lowres_ft_extracted.txt"

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # written by convert_hf_to_gguf.py itself
QUANTIZE_TYPES = ("q4_0", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k")  # need llama-quantize, from f16
DEFAULT_GGUF_TYPES = ("f16", "q8_0")
MODELFILE_PREFERENCE = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32", "q4_k_s", "q4_0")
MERGE_DTYPES = ("fp16", "bf16", "fp32")

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
PUSH_IGNORE = ("*.log", "*.partial", "*.partial/*")


class ExportError(LowresError, RuntimeError):
    """An export step failed; the message says why and what to do."""


def export_dir(config: RunConfig) -> Path:
    return Path(config.run_dir) / EXPORT_DIR


def export_name(config: RunConfig) -> str:
    """File stem for the GGUFs: base model, language and our tag, e.g.
    SmolLM2-135M-Instruct-bn-lowres-ft."""
    base = EMBEDDED_ID if config.model_name == EMBEDDED else config.model_name.rstrip("/")
    stem = f"{base.split('/')[-1]}-{config.language}-lowres-ft"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem)


# --- merge ---------------------------------------------------------------------------------------


def merge_adapter(
    config: RunConfig,
    adapter: str | Path | None = None,
    out: str | Path | None = None,
    dtype: str | None = None,
) -> Path:
    """Merge the LoRA adapter into the base and save one safetensors model with its tokenizer.

    The base is always loaded unquantized: on a GPU in 16-bit (bf16 or fp16, as the hardware
    policy says), on the CPU in fp32. Never merge into a 4-bit base: LoRA's update would be
    added to rounded NF4 weights and rounded again. That is how a QLoRA run (load_in_4bit) is
    de-quantised correctly: the adapter trained on the 4-bit weights is added to the 16-bit
    originals they were rounded from (the rounding error between the two is the small, usual
    price of QLoRA; re-quantising after the merge would be worse). The merged weights are
    saved in `dtype` (fp16 unless the config's merge_dtype says bf16 or fp32), with EOS
    <|im_end|> and pad <|endoftext|> for the embedded model, and the generation config's EOS
    matching the tokenizer's.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from lowres_ft.backends import choose_precision, detect_hardware, torch_dtype

    adapter = Path(adapter) if adapter else config.adapter_path()
    if not (adapter / "adapter_config.json").exists():
        raise ExportError(
            f"no LoRA adapter in {adapter}: run notebooks/02_train.ipynb (or `lowres-ft train`) "
            f"on run_dir={config.run_dir!r} first, or set adapter_dir."
        )
    out = Path(out) if out else export_dir(config) / MERGED_DIR
    save_dtype = dtype or config.merge_dtype
    if save_dtype not in MERGE_DTYPES:
        raise ExportError(f"merge_dtype={save_dtype!r}: use one of {', '.join(MERGE_DTYPES)}.")
    base = resolve_model(config.model_name)
    trust = config.trust_remote_code
    quantized = getattr(
        AutoConfig.from_pretrained(base, trust_remote_code=trust), "quantization_config", None
    )
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else quantized
        raise ExportError(
            f"{config.model_name} is stored quantized ({method}): merging into rounded weights "
            "loses the fine-tune's precision. Set model_name to the 16-bit original (e.g. the "
            "name without '-bnb-4bit'), which the adapter applies to, and export again."
        )
    hardware = detect_hardware()
    if hardware.device == "cpu":
        compute, placement = "fp32", None
    else:
        precision = config.precision if config.precision in ("bf16", "fp16") else "auto"
        compute, placement = choose_precision(hardware, precision), {"": 0}
    logger.info("merging %s into %s (%s, saved as %s)", adapter, base, compute, save_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch_dtype(compute), device_map=placement, trust_remote_code=trust
    )
    # safe_merge: a broken adapter (NaN) fails here instead of being baked into the weights
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload(safe_merge=True)
    model = model.to(torch_dtype(save_dtype))
    tokenizer = _trained_tokenizer(config, adapter)
    if config.model_name == EMBEDDED:
        fix_chat_tokens(tokenizer, model)
        model.config.name_or_path = EMBEDDED_ID
    _align_generation_config(model, tokenizer)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with torch.no_grad():
        model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)  # a crash mid-save leaves no half-written model behind
    return out


def _trained_tokenizer(config: RunConfig, adapter: Path) -> Any:
    """The tokenizer training saved beside the adapter (what the model learnt with), else the
    base model's."""
    from transformers import AutoTokenizer

    from lowres_ft.models import load_tokenizer

    if (adapter / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(adapter, trust_remote_code=config.trust_remote_code)
    return load_tokenizer(config.model_name, config.trust_remote_code)


def _align_generation_config(model: Any, tokenizer: Any) -> None:
    """generate() and llama.cpp stop on the generation config's EOS: it must hold the
    tokenizer's EOS (the token every trained reply ends with)."""
    generation = model.generation_config
    eos = tokenizer.eos_token_id
    current = generation.eos_token_id
    ids = current if isinstance(current, list) else [current] if current is not None else []
    if eos is not None and eos not in ids:
        generation.eos_token_id = [eos, *ids] if ids else eos
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id


# --- llama.cpp's converter -----------------------------------------------------------------------


def llama_cpp_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its `conversion` package and gguf-py: from
    $LOWRES_FT_LLAMA_CPP (a llama.cpp checkout) if set, else taken once from the
    llama-cpp-python source distribution on PyPI into cache_dir()/llama.cpp/<version>."""
    given = os.environ.get(LLAMA_CPP_ENV)
    if given:
        if not (Path(given) / "convert_hf_to_gguf.py").exists():
            raise ExportError(f"{LLAMA_CPP_ENV}={given}: no convert_hf_to_gguf.py there.")
        return Path(given)
    target = cache_dir() / "llama.cpp" / version
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        sdist = _download_sdist(version, Path(tmp))
        partial = Path(tmp) / "converter"
        _extract_converter(sdist, partial)
        (partial / _MARKER).write_text(f"from {sdist.name}\n", "utf-8")
        if not (target / _MARKER).exists():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
    return target


def _download_sdist(version: str, folder: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        "llama-cpp-python",
        f"llama-cpp-python=={version}",
        "--dest",
        str(folder),
    ]
    logger.info(
        "fetching llama.cpp's converter: llama-cpp-python %s source from PyPI (once)", version
    )
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(folder.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise ExportError(
            f"could not download the llama-cpp-python {version} source distribution from PyPI "
            f"(it holds llama.cpp's GGUF converter; needed once, then cached in "
            f"{cache_dir() / 'llama.cpp'}). Connect to PyPI once, or set {LLAMA_CPP_ENV} to a "
            f"llama.cpp checkout.\npip said:\n{tail}"
        )
    sdist = found[0]
    if version == LLAMA_CPP_PYTHON_VERSION:
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != LLAMA_CPP_PYTHON_SHA256:
            raise ExportError(
                f"{sdist.name} has SHA-256 {digest}, not the pinned {LLAMA_CPP_PYTHON_SHA256}: "
                "the download is not the file this code was tested with; not using it."
            )
    return sdist


def _extract_converter(sdist: Path, target: Path) -> None:
    """Only the converter's files, from <sdist>/vendor/llama.cpp/, with tarfile's safe filter."""
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            parts = member.name.split("/", 3)  # name-version / vendor / llama.cpp / path
            if parts[1:3] != ["vendor", "llama.cpp"] or len(parts) < 4:
                continue
            path = parts[3]
            wanted = any(
                path == p or (p.endswith("/") and path.startswith(p)) for p in _CONVERTER_PARTS
            )
            if wanted and (member.isfile() or member.isdir()) and ".." not in path.split("/"):
                member.name = path
                members.append(member)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise ExportError(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py.")
        # tarfile's "data" filter (Python 3.10.12+, 3.11.4+) also drops odd modes and owners
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(target, members=members, **safe)


def find_llama_quantize() -> str | None:
    """llama.cpp's llama-quantize (needed for k-quants such as q4_k_m): on PATH, or built in
    $LOWRES_FT_LLAMA_CPP/build/bin."""
    found = shutil.which("llama-quantize")
    if found:
        return found
    given = os.environ.get(LLAMA_CPP_ENV)
    if given and (Path(given) / "build" / "bin" / "llama-quantize").exists():
        return str(Path(given) / "build" / "bin" / "llama-quantize")
    return None


@dataclass
class GgufExport:
    """The GGUF files written (by type), the types skipped with the reason, and the logs."""

    files: dict[str, Path]
    skipped: dict[str, str]
    logs: dict[str, Path]


# Convert to several types at once below this model size: each conversion spends seconds
# importing torch on one core; a bigger model's conversions are bound by memory and disk.
PARALLEL_BELOW_BYTES = 4 * 10**9


def export_gguf(
    merged_dir: str | Path,
    out_dir: str | Path,
    outtypes: tuple[str, ...] | list[str] = DEFAULT_GGUF_TYPES,
    name: str | None = None,
) -> GgufExport:
    """Convert a merged model folder to GGUF files NAME-<type>.gguf with llama.cpp's converter
    (f32, f16, bf16, q8_0), and k-quants (q4_k_m...) from the f16 with llama-quantize when it is
    there (skipped, with the reason, when it is not). Each step logs to gguf-<type>.log beside."""
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    unknown = [t for t in outtypes if t not in CONVERTER_TYPES + QUANTIZE_TYPES]
    if unknown:
        raise ExportError(
            f"GGUF type(s) {', '.join(unknown)}: use {', '.join(CONVERTER_TYPES + QUANTIZE_TYPES)}."
        )
    if not (merged_dir / "config.json").exists():
        raise ExportError(f"{merged_dir} holds no model (config.json): run merge_adapter first.")
    name = name or merged_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    result = GgufExport({}, {}, {})
    quantize = [t for t in outtypes if t in QUANTIZE_TYPES]
    tool = find_llama_quantize() if quantize else None
    if tool is None:
        for outtype in quantize:
            result.skipped[outtype] = (
                "no llama-quantize binary found (on PATH or in $LOWRES_FT_LLAMA_CPP/build/bin): "
                f"build llama.cpp and run `llama-quantize {name}-f16.gguf {name}-{outtype}.gguf "
                f"{outtype.upper()}`, or use q8_0"
            )
            logger.warning("%s skipped: %s", outtype, result.skipped[outtype])
        quantize = []
    converted = [t for t in outtypes if t in CONVERTER_TYPES]
    if quantize and "f16" not in converted:
        converted.append("f16")  # the k-quants are made from it
    if not converted:
        return result
    converter = llama_cpp_dir()
    _check_sentencepiece()
    env = _converter_env(converter)
    script = str(converter / "convert_hf_to_gguf.py")
    targets = {t: out_dir / f"{name}-{t}.gguf" for t in converted + quantize}
    steps = {
        t: [sys.executable, script, str(merged_dir), "--outtype", t, "--outfile", str(targets[t]),
            "--model-name", name]
        for t in converted
    }  # fmt: skip
    size = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
    parallel = size < PARALLEL_BELOW_BYTES
    _run_steps(steps, targets, out_dir, env, result, parallel, "GGUF conversion to")
    quantize_steps = {
        t: [str(tool), str(targets["f16"]), str(targets[t]), t.upper()] for t in quantize
    }
    _run_steps(quantize_steps, targets, out_dir, env, result, False, "llama-quantize to")
    return result


def _run_steps(
    steps: dict[str, list[str]],
    targets: dict[str, Path],
    out_dir: Path,
    env: dict[str, str],
    result: GgufExport,
    parallel: bool,
    what: str,
) -> None:
    """Run each type's command, which writes targets[type], with its output in
    out_dir/gguf-<type>.log; all at once when `parallel`."""
    started = time.perf_counter()
    running = []
    for outtype, command in steps.items():
        target = targets[outtype]
        log = out_dir / f"gguf-{outtype}.log"
        result.logs[outtype] = log
        handle = log.open("w", encoding="utf-8")
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        logger.info("%s %s: %s", what, outtype, target.name)
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        running.append((outtype, target, log, handle, process))
        if not parallel:
            process.wait()
    failures = []
    for outtype, target, log, handle, process in running:
        code = process.wait()
        handle.close()
        if code != 0 or not target.exists():
            target.unlink(missing_ok=True)
            failures.append((outtype, code, log))
        else:
            result.files[outtype] = target
            logger.info("%s %s: %.0f MB", what, outtype, target.stat().st_size / 1e6)
    if failures:
        outtype, code, log = failures[0]
        tail = log.read_text("utf-8", errors="replace").strip().splitlines()[-15:]
        raise ExportError(
            f"{what} {outtype} failed (exit {code}). {_advice(tail)} Full log: {log}\n"
            + "\n".join(tail)
        )
    if running:
        logger.info("%s %s: %.0f s", what, ", ".join(steps), time.perf_counter() - started)


def _has_sentencepiece() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentencepiece") is not None


def _check_sentencepiece() -> None:
    if not _has_sentencepiece():
        raise ExportError(
            "llama.cpp's converter imports sentencepiece for every Llama-family model (before it "
            "looks for a tokenizer.model) and it is not installed: `pip install sentencepiece`."
        )


def _converter_env(converter: Path) -> dict[str, str]:
    """The converter's own gguf-py first on the path; no hub access; no tokens passed on."""
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_ENV and k != "NO_LOCAL_GGUF"}
    paths = [str(converter / "gguf-py"), str(converter)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _advice(tail: list[str]) -> str:
    text = "\n".join(tail)
    missing = re.search(r"No module named '([\w.]+)'", text)
    if "pre-tokenizer was not recognized" in text:
        return (
            "llama.cpp does not recognise this tokenizer's pre-tokenizer (it knows those of "
            "published models by a hash of their output): export a model whose base llama.cpp "
            "supports, or add the tokenizer with llama.cpp's convert_hf_to_gguf_update.py."
        )
    if missing:
        package = missing.group(1).split(".")[0]
        return f"the converter needs the Python package {package!r}: pip install {package}."
    if "is not supported" in text:
        return (
            "llama.cpp cannot convert this architecture: use the merged safetensors folder "
            "with transformers instead."
        )
    return "Read the log for the converter's reason."


@dataclass
class GgufCheck:
    """How closely a GGUF file matches the merged model it was converted from."""

    gguf: Path
    max_weight_diff: float  # largest |GGUF weight - merged weight| over all tensors
    logits_cosine: float  # of the next-token logits after the prompt
    same_tokens: int  # leading greedy tokens on which the two agree
    tokens: int  # greedy tokens compared
    metadata: dict[str, Any]  # the GGUF's architecture, special token ids, chat template


def gguf_state_dict(gguf_file: Any, model: Any) -> dict[str, Any]:
    """A Llama-family GGUF's weights under `model`'s parameter names, de-quantised to fp32,
    with llama.cpp's rotary permutation of q/k undone. Read with gguf's reader: transformers'
    own GGUF loading takes ~20 s for a 135M model, this ~5 s. `gguf_file`: a path or a
    gguf.GGUFReader already open."""
    import gguf
    import torch

    config = model.config
    if config.model_type not in ("llama", "mistral"):
        raise ExportError(f"reading a {config.model_type} GGUF back is not supported: Llama only.")
    reader = gguf_file if isinstance(gguf_file, gguf.GGUFReader) else gguf.GGUFReader(gguf_file)
    tensors = {t.name: t for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    state = {}
    for key, parameter in model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name not in tensors:
            continue  # the output head when it is tied to the embeddings
        tensor = tensors[name]
        values = torch.from_numpy(
            gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype("float32")
        ).reshape(parameter.shape)
        if key.endswith(("q_proj.weight", "k_proj.weight")):
            n = heads if "q_proj" in key else kv_heads
            shape = values.shape
            values = values.reshape(n, shape[0] // n // 2, 2, *shape[1:]).swapaxes(1, 2)
            values = values.reshape(shape)
        state[key] = values
    return state


def check_gguf(
    merged_dir: str | Path, gguf_path: str | Path, prompt: str, max_new_tokens: int = 16
) -> GgufCheck:
    """Load a GGUF's weights into the merged model's architecture and compare weights, the
    next-token logits and greedy replies on `prompt`: proof that the file is the fine-tune
    (f16: identical; q8_0: close). Runs on the CPU in fp32, so meant for small models."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    reader = gguf.GGUFReader(gguf_path)  # parsing its metadata takes seconds: read once
    state = gguf_state_dict(reader, merged)
    reference = merged.state_dict()
    diff = max((state[k] - reference[k]).abs().max().item() for k in state)
    loaded = copy.deepcopy(merged)
    missing = set(reference) - set(state)
    tied = {"lm_head.weight"} if merged.config.tie_word_embeddings else set()
    if missing - tied:
        raise ExportError(f"{gguf_path} lacks tensors for {', '.join(sorted(missing - tied))}.")
    loaded.load_state_dict(state, strict=False)
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    replies, logits = [], []
    for model in (merged, loaded):
        with torch.no_grad():
            logits.append(model(ids).logits[0, -1])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,  # compare a fixed length, past any EOS
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        replies.append(out[0, ids.shape[1] :].tolist())
    pairs = zip(replies[0], replies[1], strict=True)
    same = next((i for i, (a, b) in enumerate(pairs) if a != b), len(replies[0]))
    cosine = torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=0).item()
    keys = {
        "architecture": "general.architecture",
        "eos_token_id": "tokenizer.ggml.eos_token_id",
        "padding_token_id": "tokenizer.ggml.padding_token_id",
        "bos_token_id": "tokenizer.ggml.bos_token_id",
        "chat_template": "tokenizer.chat_template",
    }
    metadata = {k: reader.fields[f].contents() for k, f in keys.items() if f in reader.fields}
    return GgufCheck(Path(gguf_path), diff, cosine, same, len(replies[0]), metadata)


# --- Ollama Modelfile ----------------------------------------------------------------------------

# Ollama's Go templates reproducing the Hugging Face chat templates the models trained with. The
# system prompt comes from .System (the Modelfile's SYSTEM, or the request's system message), so
# the loop skips system messages. Each ends with the assistant's header: the model's turn.
OLLAMA_TEMPLATES = {
    "chatml": (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n"
        "{{- range .Messages }}\n"
        '{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\n'
        "{{- end }}<|im_start|>assistant\n"
    ),
    "llama3": (
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
        "{{ .System }}<|eot_id|>\n{{- end }}\n"
        "{{- range .Messages }}\n"
        '{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
        "{{ .Content }}<|eot_id|>\n{{- end }}\n"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}
# Tokens that end a turn or start the next one: generation must stop at any of them.
STOP_TOKENS = {
    "chatml": ("<|im_end|>", "<|im_start|>", "<|endoftext|>"),
    "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
}
# How each format writes a system turn: the default system prompt a template adds by itself
# (SmolLM2's "You are a helpful AI assistant named SmolLM...") is read from its output.
_SYSTEM_TURN = {
    "chatml": re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.DOTALL),
    "llama3": re.compile(
        r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.DOTALL
    ),
}


def chat_format(tokenizer: Any) -> str:
    """'chatml' or 'llama3', recognised from the tokenizer's chat template."""
    template = tokenizer.chat_template or ""
    if not isinstance(template, str):  # several named templates: the default one
        template = dict(template).get("default", "")
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    raise ExportError(
        "no Ollama template for this model's chat template (known: ChatML as in SmolLM2 and "
        "Qwen, and Llama 3): write the Modelfile's TEMPLATE by hand. The GGUF carries the "
        "original template, so llama.cpp (llama-server --jinja) uses it as it is."
    )


def default_system_prompt(tokenizer: Any) -> str:
    """The system prompt the chat template inserts when a chat has none (what training saw)."""
    fmt = chat_format(tokenizer)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "\u2063"}], tokenize=False, add_generation_prompt=True
    )
    before_user = rendered.split("\u2063")[0]
    found = _SYSTEM_TURN[fmt].search(before_user)
    return found.group(1) if found else ""


def write_modelfile(
    gguf_path: str | Path,
    tokenizer: Any,
    config: RunConfig | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """An Ollama Modelfile for a GGUF: the chat template in Ollama's syntax, the stop tokens,
    the system prompt the model trained with, and the run's decoding settings."""
    from lowres_ft.generate import PRESETS, GenerationSettings

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir) if out_dir else gguf_path.parent
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    fmt = chat_format(tokenizer)
    system = (config.system_prompt if config else "") or default_system_prompt(tokenizer)
    if '"""' in system:
        raise ExportError('the system prompt contains """, which a Modelfile cannot quote.')
    source = gguf_path.resolve()
    with contextlib.suppress(ValueError):  # ValueError: another drive on Windows
        source = Path(os.path.relpath(source, out_dir.resolve()))
    stops = [s for s in STOP_TOKENS[fmt] if s in tokenizer.get_vocab()] or list(STOP_TOKENS[fmt])
    for extra in (tokenizer.eos_token, tokenizer.pad_token):
        if extra and extra not in stops and extra in (tokenizer.all_special_tokens or []):
            stops.append(extra)
    name = gguf_path.stem.rsplit("-", 1)[0].lower()
    lines = [
        f"# Ollama Modelfile written by lowres-ft ({fmt} chat template).",
        f"#   ollama create {name} -f {MODELFILE}",
        f"#   ollama run {name}",
        f"FROM {source.as_posix() if source.is_absolute() else _dot_relative(source)}",
        f'TEMPLATE """{OLLAMA_TEMPLATES[fmt]}"""',
    ]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    settings = GenerationSettings.from_config(config) if config else GenerationSettings()
    lines += [
        f"PARAMETER temperature {settings.temperature:g}",
        f"PARAMETER top_p {settings.top_p:g}",
        f"PARAMETER top_k {settings.top_k}",
        f"PARAMETER repeat_penalty {settings.repetition_penalty:g}",
        f"PARAMETER seed {settings.seed}",
    ]
    length = settings.max_new_tokens or PRESETS[settings.preset]
    if length:
        lines.append(f"PARAMETER num_predict {length}")
    path = out_dir / MODELFILE
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


# --- model card ----------------------------------------------------------------------------------

# Licences of the base models the recipes use, for the card's front matter ("other" otherwise).
BASE_LICENSES = {
    "HuggingFaceTB/SmolLM2": "apache-2.0",
    "meta-llama/Llama-3.1": "llama3.1",
    "meta-llama/Llama-3.2": "llama3.2",
    "meta-llama/Meta-Llama-3": "llama3",
    "google/gemma": "gemma",
    "mistralai/Mistral": "apache-2.0",
    "Qwen/Qwen2.5": "apache-2.0",
}
# Metrics of evaluation/metrics.json in the card's table, with the better direction.
CARD_METRICS = (
    ("perplexity", "perplexity on reference replies", "lower"),
    ("bits_per_character", "bits per character", "lower"),
    ("chrf_pp", "chrF++", "higher"),
    ("bleu", "BLEU", "higher"),
    ("rouge_l", "ROUGE-L", "higher"),
    ("script_share", "share of reply letters in the language's script", "higher"),
    ("language_share", "share of replies in the language", "higher"),
    ("stopped_at_eos", "share of replies that ended by themselves", "higher"),
    ("mean_new_tokens", "mean reply length (tokens)", ""),
)


def _dot_relative(path: Path) -> str:
    """./x.gguf or ../x.gguf: Ollama reads a FROM path relative to the Modelfile's folder."""
    text = path.as_posix()
    return text if text.startswith("../") else f"./{text}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _base_id(config: RunConfig) -> str:
    return EMBEDDED_ID if config.model_name == EMBEDDED else config.model_name


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/"))


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def write_model_card(
    config: RunConfig,
    run_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    notes: dict[str, str] | None = None,
) -> Path:
    """README.md for the export folder (the hub's model card): what the model is, the data
    and training behind it, its evaluation, its limits and how to use it. Each section reads
    the run folder's files; a missing one says which notebook writes it. `notes`: steps
    skipped and why."""
    from lowres_ft.data.prepare import DATA_DIR, STATS_FILE
    from lowres_ft.data.report import REPORT_FILE
    from lowres_ft.evaluate import EVAL_DIR
    from lowres_ft.runs import ENVIRONMENT_FILE
    from lowres_ft.train import EXPERIMENT_FILE

    run_dir = Path(run_dir or config.run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / EXPORT_DIR
    report = _read_json(run_dir / DATA_DIR / REPORT_FILE)
    stats = _read_json(run_dir / DATA_DIR / STATS_FILE) or (report or {}).get("cleaning")
    metrics = _read_json(run_dir / EVAL_DIR / "metrics.json") or {}
    scores = metrics.get("scores") or []
    sections = [
        _card_front(config),
        _card_model(config, out_dir, notes or {}),
        _card_data(config, report, stats),
        _card_training(
            config,
            _read_json(run_dir / EXPERIMENT_FILE),
            _read_json(run_dir / ENVIRONMENT_FILE),
        ),
        _card_evaluation(metrics.get("settings", {}), scores),
        _card_limits(config, scores),
        _card_usage(config, out_dir),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CARD_FILE
    path.write_text("\n".join(line for section in sections for line in section) + "\n", "utf-8")
    return path


def _language(config: RunConfig) -> tuple[str, str]:
    """The language's name and its script's."""
    from lowres_ft.data.scripts import LANGUAGE_NAMES, script_for_language

    return LANGUAGE_NAMES.get(config.language, config.language), script_for_language(
        config.language
    )


def _card_front(config: RunConfig) -> list[str]:
    import yaml

    from lowres_ft.data.scripts import LANGUAGE_SCRIPTS

    base = _base_id(config)
    front: dict[str, Any] = {
        "license": next((v for k, v in BASE_LICENSES.items() if base.startswith(k)), "other"),
    }
    if _is_hub_id(base):
        front["base_model"] = base
    if config.language in LANGUAGE_SCRIPTS:  # a language code, not a bare script name
        front["language"] = [config.language]
    front["library_name"] = "transformers"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["lowres-ft", "lora", "peft", "gguf", "low-resource", "text-generation"]
    language, _ = _language(config)
    return [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {export_name(config)}",
        "",
        f"A {language} chat assistant: `{base}` fine-tuned with LoRA by lowres-ft on the data "
        "below. This folder holds the adapter, the merged model, GGUF files for llama.cpp and "
        "Ollama, and an Ollama Modelfile.",
    ]


def _size(path: Path) -> int:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file())


def _card_model(config: RunConfig, out_dir: Path, notes: dict[str, str]) -> list[str]:
    language, script = _language(config)
    lines = [
        "",
        "## Model",
        "",
        f"- Base model: `{_base_id(config)}`",
        f"- Language: {language} (`{config.language}`, {script} script)",
    ]
    if config.system_prompt:
        lines.append(f"- System prompt used in training: “{config.system_prompt}”")
    entries = sorted(out_dir.iterdir()) if out_dir.exists() else []
    for path in entries:
        if path.name != CARD_FILE and not path.name.endswith((".log", ".partial")):
            slash = "/" if path.is_dir() else ""
            lines.append(f"- `{path.name}{slash}` ({_size(path) / 1e6:,.1f} MB)")
    lines += [f"- Not included: {step}: {reason}" for step, reason in notes.items()]
    return lines


def _card_data(
    config: RunConfig, report: dict[str, Any] | None, stats: dict[str, Any] | None
) -> list[str]:
    lines = ["", "## Training data", ""]
    if report is None and stats is None:
        return lines + [
            "No data report in the run folder: run notebooks/01_data_prep.ipynb (or "
            "`lowres-ft prepare`) to write data/report.json."
        ]
    lines.append(f"- Source: `{(report or {}).get('data_path', config.data_path)}`")
    if stats:
        lines.append(
            f"- Rows read: {stats['read']:,}; kept after cleaning: {stats['kept']:,}; "
            f"rejected: {stats['rejected_total']:,}"
        )
        for label, key in (("Rejected by step", "rejected"), ("Changed and kept", "changed")):
            counts = {k: v for k, v in stats.get(key, {}).items() if v}
            if counts:
                lines.append(f"- {label}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if report:
        split = report.get("split", {})
        lines.append(
            f"- Split: {split.get('train', 0):,} training and "
            f"{split.get('validation', 0):,} validation rows"
        )
        tokens = report.get("lengths", {}).get("tokens", {})
        if tokens:
            lines.append(
                "- Length in tokens (chat template applied): "
                f"median {_number(tokens.get('median'))}, 95th percentile "
                f"{_number(tokens.get('p95'))}, longest {_number(tokens.get('max'))}"
            )
        fertility = report.get("fertility", {})
        if fertility:
            pairs = ", ".join(f"{k} {_number(v)}" for k, v in fertility.items())
            lines.append(f"- Tokenizer fertility (tokens a word): {pairs}")
        mix = list(report.get("script_mix", {}).items())[:4]
        if mix:
            lines.append("- Script mix: " + ", ".join(f"{k} {v:.1%}" for k, v in mix))
    return lines


def _card_training(
    config: RunConfig, experiment: dict[str, Any] | None, environment: dict[str, Any] | None
) -> list[str]:
    on_off = {True: "on", False: "off"}
    length = (
        f"{config.max_steps} steps" if config.max_steps else f"{config.num_train_epochs:g} epochs"
    )
    lines = [
        "",
        "## Training",
        "",
        f"- LoRA: r={config.lora_r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}, "
        f"targets `{config.lora_target_modules}`, rsLoRA {on_off[config.use_rslora]}",
        f"- Base weights in training: {_training_precision(config, experiment)}; the merge "
        "adds the adapter to the unquantized 16-bit base",
        f"- Learning rate {config.learning_rate:g} ({config.lr_scheduler_type}), batch "
        f"{config.batch_size} x {config.gradient_accumulation_steps} accumulation, {length}, "
        f"max_seq_length {config.max_seq_length}, seed {config.seed}",
    ]
    if experiment is None:
        lines.append(
            "- No experiment.json in the run folder: run notebooks/02_train.ipynb (or "
            "`lowres-ft train`) for the training time, losses and hardware."
        )
    else:
        result = experiment.get("result", {})
        seconds = result.get("seconds") or 0
        took = f"{seconds / 60:.1f} minutes" if seconds >= 120 else f"{seconds:.0f} s"
        lines.append(
            f"- Trained {result.get('global_step', '?')} steps in {took} on "
            f"{experiment.get('hardware', '?')}"
        )
        lines.append(f"- Backend: {experiment.get('backend', '?')}")
        if result.get("train_loss") is not None:
            lines.append(f"- Final training loss: {_number(result['train_loss'])}")
        evals = result.get("eval_losses") or []
        if evals:
            (first_step, first), (last_step, last) = evals[0], evals[-1]
            lines.append(
                f"- Validation loss: {_number(first)} at step {first_step}, "
                f"{_number(last)} at step {last_step}"
            )
        if result.get("tokens_per_second"):
            lines.append(f"- Speed: {_number(result['tokens_per_second'])} tokens/s (median)")
        if result.get("peak_memory_gib"):
            lines.append(f"- Peak GPU memory: {_number(result['peak_memory_gib'])} GiB")
    if environment:
        wanted = ("torch", "transformers", "peft", "trl", "unsloth")
        packages = environment.get("packages", {})
        versions = ", ".join(f"{k} {packages[k]}" for k in wanted if packages.get(k))
        lines.append(f"- Software: Python {environment.get('python', '?')}, {versions}")
    return lines


def _training_precision(config: RunConfig, experiment: dict[str, Any] | None) -> str:
    if experiment is None:
        return f"load_in_4bit={config.load_in_4bit} (4-bit NF4 only where a GPU trains)"
    if "4-bit base" in str(experiment.get("backend", "")):
        return "4-bit NF4 (QLoRA)"
    return "16/32-bit (no quantization)"


def _card_evaluation(settings: dict[str, Any], scores: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Evaluation", ""]
    if not scores:
        return lines + [
            "Not evaluated yet: run notebooks/03_evaluate.ipynb (or `lowres-ft evaluate`) on "
            "this run folder, then export again."
        ]
    lines += [
        f"On {settings.get('rows', '?')} held-out rows (`{settings.get('source', '?')}`), with "
        "the same decoding settings for each model; replies are scored against the references.",
        "",
        "| metric | better | " + " | ".join(s["name"] for s in scores) + " |",
        "|---|---|" + "---|" * len(scores),
    ]
    for key, label, better in CARD_METRICS:
        if any(key in s for s in scores):
            values = " | ".join(_number(s.get(key, float("nan"))) for s in scores)
            lines.append(f"| {label} | {better} | {values} |")
    return lines


def _card_limits(config: RunConfig, scores: list[dict[str, Any]]) -> list[str]:
    language, script = _language(config)
    tiny = config.model_name == EMBEDDED
    lines = [
        "",
        "## Intended use and limits",
        "",
        f"- A small research and learning model for {language} chat. "
        + ("With 135M parameters it writes fluent-looking but often wrong text. " if tiny else "")
        + "It was fine-tuned on little data in a low-resource language and will make up "
        "facts, names and numbers.",
        "- Not for medical, legal, financial or other advice that people act on, nor for "
        "decisions about people.",
        "- Replies may drift into another language or script, more so when long.",
    ]
    by_name = {s.get("name"): s for s in scores}
    tuned, base = by_name.get("fine-tuned"), by_name.get("base")
    if tuned and not math.isnan(tuned.get("script_share", math.nan)):
        versus = f" (base model: {base['script_share']:.0%})" if base else ""
        lines.append(
            f"- Script fidelity in the evaluation: {tuned['script_share']:.0%} of the fine-tuned "
            f"model's reply letters were in the {script} script{versus}, and "
            f"{tuned.get('language_share', math.nan):.0%} of its replies were in {language}."
        )
    lines.append(
        "- Check the licences of the training data and of the base model before sharing it."
    )
    return lines


def _card_usage(config: RunConfig, out_dir: Path) -> list[str]:
    repo = config.hub_repo_id
    adapter = f'"{repo}", subfolder="adapter"' if repo else '"./adapter"'
    merged = f'"{repo}", subfolder="merged"' if repo else '"./merged"'
    ggufs = {p.stem.rsplit("-", 1)[-1]: p.name for p in out_dir.glob("*.gguf")}
    preferred = [ggufs[t] for t in MODELFILE_PREFERENCE if t in ggufs]
    gguf = preferred[0] if preferred else f"{export_name(config)}-q8_0.gguf"
    name = export_name(config).lower()
    return [
        "",
        "## How to use",
        "",
        "With transformers and peft (the adapter on the base model):",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{_base_id(config)}")',
        f"model = PeftModel.from_pretrained(base, {adapter})",
        f"tokenizer = AutoTokenizer.from_pretrained({adapter})",
        f"# or the merged model alone: AutoModelForCausalLM.from_pretrained({merged})",
        "",
        'messages = [{"role": "user", "content": "..."}]',
        "ids = tokenizer.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ")",
        f"out = model.generate(**ids, max_new_tokens=200, "
        f"repetition_penalty={config.repetition_penalty:g})",
        'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "With Ollama, from the folder with the Modelfile and the GGUF files:",
        "",
        "```bash",
        f"ollama create {name} -f Modelfile",
        f"ollama run {name}",
        "```",
        "",
        "With llama.cpp (the GGUF carries the chat template):",
        "",
        "```bash",
        f"llama-cli -m {gguf} -cnv",
        f"llama-server -m {gguf} --jinja",
        "```",
    ]


# --- hub -----------------------------------------------------------------------------------------


def hub_token(token: str | None = None) -> str | None:
    """The token from the argument, HF_TOKEN / HUGGING_FACE_HUB_TOKEN, Colab's secret HF_TOKEN,
    or the one `huggingface_hub.login()` stored; None without one. Never logged or written."""
    if token:
        return token
    for name in TOKEN_ENV:
        if os.environ.get(name):
            return os.environ[name]
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        found = userdata.get("HF_TOKEN")
        if found:
            return found
    except Exception:  # not on Colab, no such secret, or access not granted
        pass
    from huggingface_hub import constants

    stored = Path(constants.HF_TOKEN_PATH)
    return (stored.read_text("utf-8").strip() or None) if stored.is_file() else None


def push_plan(folder: str | Path) -> list[dict[str, Any]]:
    """The files a push would send (relative path and bytes), logs and partial files left out."""
    from fnmatch import fnmatch

    folder = Path(folder)
    plan = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        ignored = any(fnmatch(relative, p) for p in PUSH_IGNORE) or ".partial" in relative
        if path.is_file() and not ignored:
            plan.append({"path": relative, "bytes": path.stat().st_size})
    return plan


def push_to_hub(
    folder: str | Path, repo_id: str, token: str | None = None, private: bool = True
) -> str | None:
    """Upload the export folder to a hub model repo (created if needed); returns its URL, or
    None without a token, after logging what would have been pushed."""
    plan = push_plan(folder)
    total = sum(item["bytes"] for item in plan) / 1e6
    resolved = hub_token(token)
    if not resolved:
        logger.info(
            "no Hugging Face token (argument, HF_TOKEN, or a Colab secret named HF_TOKEN): not "
            "pushing %d files (%.1f MB) to %s: %s",
            len(plan),
            total,
            repo_id,
            ", ".join(item["path"] for item in plan),
        )
        return None
    from huggingface_hub import HfApi

    api = HfApi(token=resolved)
    url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        ignore_patterns=list(PUSH_IGNORE),
        commit_message="Export from lowres-ft",
    )
    logger.info("pushed %d files (%.1f MB) to %s", len(plan), total, url)
    return str(url)


# --- the whole stage -----------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What export_run wrote, what it skipped and why, and where it pushed."""

    folder: Path
    adapter: Path
    merged: Path
    gguf: dict[str, Path]
    modelfile: Path | None
    card: Path
    skipped: dict[str, str] = field(default_factory=dict)
    hub_url: str | None = None
    hub_plan: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)  # the converter's output, by GGUF type

    def table(self) -> list[dict[str, Any]]:
        """One row per artefact (or skipped step), for the notebook to show."""
        rows = [
            {"what": what, "path": str(path), "MB": round(_size(path) / 1e6, 1), "note": ""}
            for what, path in (
                ("adapter", self.adapter),
                ("merged model", self.merged),
                *((f"GGUF {t}", p) for t, p in self.gguf.items()),
                ("Modelfile", self.modelfile),
                ("model card", self.card),
            )
            if path is not None
        ]
        rows += [
            {"what": step, "path": "", "MB": 0.0, "note": f"skipped: {why}"}
            for step, why in self.skipped.items()
        ]
        if self.hub_url:
            rows.append({"what": "hub", "path": self.hub_url, "MB": 0.0, "note": "pushed"})
        return rows


def gguf_types(config: RunConfig) -> list[str]:
    return [t.strip().lower() for t in config.gguf_types.split(",") if t.strip()]


def export_run(config: RunConfig, progress: bool = True) -> ExportResult:
    """The whole stage into <run_dir>/export/: copy the adapter, merge, GGUF, Modelfile, model
    card, and push when hub_repo_id and a token are there."""
    from tqdm.auto import tqdm

    folder = export_dir(config)
    adapter = config.trained_adapter()
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    bar = tqdm(total=6, desc="export", disable=not progress)

    def stage(name: str) -> None:
        bar.set_description(f"export: {name}")
        seconds[name] = time.perf_counter()

    def done(name: str) -> None:
        seconds[name] = round(time.perf_counter() - seconds[name], 1)
        bar.update(1)

    stage("adapter")
    copied = folder / ADAPTER_DIR
    if copied.resolve() != adapter.resolve():
        shutil.rmtree(copied, ignore_errors=True)
        shutil.copytree(adapter, copied, ignore=shutil.ignore_patterns("checkpoint-*"))
    done("adapter")

    stage("merge")
    merged = merge_adapter(config, adapter, folder / MERGED_DIR)
    done("merge")

    stage("gguf")
    types = gguf_types(config)
    for stale in folder.glob("*.gguf"):  # files of an earlier export with other types
        stale.unlink()
    result = export_gguf(merged, folder, types, export_name(config)) if types else None
    files = result.files if result else {}
    skipped.update(result.skipped if result else {"gguf": "gguf_types is empty"})
    done("gguf")

    stage("modelfile")
    modelfile = None
    preferred = next((files[t] for t in MODELFILE_PREFERENCE if t in files), None)
    if preferred is None:
        skipped["modelfile"] = "no GGUF file to point it at"
    else:
        try:
            modelfile = write_modelfile(preferred, merged, config, folder)
        except ExportError as error:
            skipped["modelfile"] = str(error)
            logger.warning("Modelfile skipped: %s", error)
    done("modelfile")

    stage("card")
    repo = config.hub_repo_id
    notes = dict(skipped)
    card = write_model_card(config, config.run_dir, folder, notes)
    done("card")

    stage("hub")
    plan = push_plan(folder)
    url = None
    if not repo:
        skipped["hub"] = "hub_repo_id is empty: set it (e.g. 'your-name/model') to push"
    else:
        url = push_to_hub(folder, repo, private=config.hub_private)
        if url is None:
            skipped["hub"] = "no Hugging Face token: set HF_TOKEN (on Colab, a secret) to push"
    done("hub")
    bar.close()
    logs = result.logs if result else {}
    return ExportResult(
        folder, copied, merged, files, modelfile, card, skipped, url, plan, seconds, logs
    )
