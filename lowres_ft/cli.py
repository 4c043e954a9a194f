"""`lowres-ft`: the command line over the same notebooks and library calls.

lowres-ft prepare --data-path corpus.txt --language as --run-dir runs/as1
lowres-ft evaluate --run-dir runs/demo       # base vs fine-tuned: perplexity, chrF++, script
lowres-ft chat --run-dir runs/demo           # talk to the fine-tuned model in the terminal
lowres-ft export --run-dir runs/demo         # merged model, GGUF, Modelfile, model card
lowres-ft run --run-dir runs/demo            # prepare, train, evaluate, export (the demo)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from lowres_ft.config import LowresError, RunConfig, field_help, inherit_config, load_recipe
from lowres_ft.notebooks import PIPELINE, run_notebook, run_pipeline


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per RunConfig field; only flags given on the command line are passed on."""
    defaults = RunConfig()
    helps = field_help()
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        text = f"{helps.get(field.name, '')} (default {default!r})"
        if isinstance(default, bool):
            options = {"action": argparse.BooleanOptionalAction}
        elif isinstance(default, list):
            options = {"action": "append"}
            text = f"{helps.get(field.name, '')} (repeat the flag for several)"
        else:
            options = {"type": type(default)}
        parser.add_argument(flag, dest=field.name, default=argparse.SUPPRESS, help=text, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowres-ft",
        description="Fine-tune open LLMs into chat assistants for low-resource languages. "
        "Each command runs a numbered notebook under papermill into --run-dir, so the run "
        "folder holds the executed notebook, config, data, report and artefacts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare",
        help="clean, split and report on a dataset (notebook 01)",
        description="Load a text/CSV/JSONL/JSON file or datasets folder, clean it, split it "
        "and write data/train.jsonl, data/validation.jsonl, data/rejects.jsonl and a report.",
    )
    _add_config_flags(prepare)
    train = commands.add_parser(
        "train",
        help="fine-tune with LoRA/QLoRA on a prepared run folder (library call; killable)",
        description="Train on <run-dir>/data from `prepare`, inheriting its config. Writes "
        "checkpoints, metrics.jsonl, experiment.json, loss.png and the adapter. After a crash "
        "or disconnect, run the same command with --resume.",
    )
    _add_config_flags(train)
    train.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="data-parallel over this many GPUs of this machine (e.g. Kaggle's T4 x2): one "
        "process per GPU through torchrun, each with its own 4-bit copy; batch_size is per GPU",
    )
    evaluate = commands.add_parser(
        "evaluate",
        help="compare the base and fine-tuned model (notebook 03)",
        description="Perplexity and bits per character on the reference replies, chrF++, BLEU, "
        "ROUGE-L and script fidelity of generated replies, for the base model and base + "
        "adapter on the same rows and settings. Writes <run-dir>/evaluation/ (metrics.json, "
        "metrics.csv, comparison.png, examples.jsonl).",
    )
    _add_config_flags(evaluate)
    chat = commands.add_parser(
        "chat",
        help="talk to the fine-tuned model in the terminal (or --web for a browser chat)",
        description="A multi-turn chat with base + <run-dir>/adapter; replies stream as they are "
        "generated and are logged to <run-dir>/generated_responses.jsonl. Type /clear to start "
        "over, /quit (or Ctrl-D) to leave. --web serves the Gradio app (pip install "
        "'lowres-ft[app]').",
    )
    chat.add_argument("--web", action="store_true", help="serve the Gradio chat app instead")
    chat.add_argument("--port", type=int, default=7860, help="port of the web chat")
    _add_config_flags(chat)
    export = commands.add_parser(
        "export",
        help="merge, convert to GGUF, write a Modelfile and model card (notebook 05)",
        description="Into <run-dir>/export/: the adapter, base + adapter merged in 16-bit "
        "(safetensors), GGUF files (--gguf-types; converted with llama.cpp's own script), an "
        "Ollama Modelfile and a model card. With HF_TOKEN set and --hub-repo-id, pushes the "
        "folder to the Hugging Face Hub; without a token it lists what would be pushed.",
    )
    _add_config_flags(export)
    run = commands.add_parser(
        "run",
        help="run the pipeline: " + " -> ".join(PIPELINE) + " (the demo)",
        description=f"Run the stages {', '.join(PIPELINE)} on one run folder.",
    )
    _add_config_flags(run)
    sweep = commands.add_parser(
        "sweep",
        help="run 02 + 03 over a parameter grid, one run folder per configuration",
        description="Prepare the data once (or reuse --data-from), then train and evaluate every "
        "combination of the --grid values in <sweep-dir>/<configuration>/, and write "
        "<sweep-dir>/results.csv and sweep.png (validation loss and chrF++ per configuration). "
        "Finished configurations are skipped, so running the same command again resumes.",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="NAME=V1,V2",
        help="a RunConfig field and its values; repeat for more, e.g. --grid "
        "learning_rate=1e-4,2e-4 --grid lora_r=8,16",
    )
    sweep.add_argument("--sweep-dir", default="runs/sweep", help="where the run folders go")
    sweep.add_argument("--data-from", default=None, help="a run folder with prepared data")
    _add_config_flags(sweep)
    for command in (prepare, train, evaluate, chat, export, run, sweep):
        command.add_argument(
            "--recipe",
            default=None,
            help="a recipes/*.yaml parameters file; flags given here win over it",
        )
        command.add_argument(
            "--model",
            dest="model_name",
            default=argparse.SUPPRESS,
            help="shortcut for --model-name; 'embedded' runs a recipe as a CPU trial",
        )
    return parser


def data_parallel_command(argv: list[str], gpus: int) -> list[str]:
    """The same `lowres-ft train` command, started once per GPU by torchrun."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            rest.append(arg)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus}",
        "-m",
        "lowres_ft.cli",
        *rest,
    ]


def _launch_data_parallel(argv: list[str], gpus: int) -> int:
    import subprocess

    from lowres_ft.backends import detect_hardware

    found = detect_hardware().count  # 0 without a CUDA GPU
    if found and found < gpus:
        raise LowresError(f"--gpus {gpus}: this machine has {found} GPU(s); use --gpus {found}.")
    if not found:
        print(f"no CUDA GPU: --gpus {gpus} starts {gpus} CPU processes (gloo), for testing")
    command = data_parallel_command(argv, gpus)
    print("launching: " + " ".join(command[1:]))
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    recipe = args.pop("recipe", None)
    try:
        parameters: dict[str, Any] = load_recipe(recipe, **args) if recipe else args
        if command == "prepare":
            output = run_notebook("prepare", parameters)
            print(f"executed notebook: {output}")
        elif command == "train":
            from lowres_ft.runs import is_main_process
            from lowres_ft.train import train

            gpus = parameters.pop("gpus", 1)
            if gpus < 1:
                raise LowresError(f"--gpus {gpus}: use 1 or more.")
            if gpus > 1 and "LOCAL_RANK" not in os.environ:
                return _launch_data_parallel(argv, gpus)
            parameters.setdefault("run_dir", RunConfig().run_dir)
            config, overrides = inherit_config(**parameters)
            for name, (saved, new) in overrides.items():
                print(f"override {name}: {saved!r} -> {new!r}")
            result = train(config)
            if is_main_process():
                print(json.dumps(result.to_json(), indent=2))
        elif command == "evaluate":
            output = run_notebook("evaluate", parameters)
            print(f"executed notebook: {output}")
        elif command == "export":
            output = run_notebook("export", parameters)
            print(f"executed notebook: {output}")
        elif command == "chat":
            return _chat(parameters)
        elif command == "run":
            for output in run_pipeline(parameters):
                print(f"executed notebook: {output}")
        elif command == "sweep":
            from lowres_ft.sweep import parse_grid, run_sweep

            grid = parse_grid(parameters.pop("grid"))
            sweep_dir, data_from = parameters.pop("sweep_dir"), parameters.pop("data_from")
            result = run_sweep(parameters, grid, sweep_dir, data_from)
            print(
                f"ran {len(result.ran)}, skipped {len(result.skipped)} (done before); "
                f"table: {result.table_path}"
            )
    except LowresError as error:
        print(f"lowres-ft: {error}", file=sys.stderr)
        return 2
    return 0


def _chat(parameters: dict[str, Any]) -> int:

    web, port = parameters.pop("web"), parameters.pop("port")
    parameters.setdefault("run_dir", RunConfig().run_dir)
    config, _ = inherit_config(**parameters)
    adapter = config.adapter_path()
    if web:
        from lowres_ft.app import launch

        launch(config.run_dir, str(adapter), port=port)
        return 0
    from lowres_ft.generate import GenerationSettings, ResponseLog, load_chat_model

    chat_model = load_chat_model(config, adapter if adapter.exists() else None)
    session = chat_model.session(
        GenerationSettings.from_config(config), config.system_prompt, ResponseLog(config.run_dir)
    )
    print(
        f"chatting with {chat_model.model_id} + {chat_model.adapter_id or 'no adapter'}; "
        "/clear starts over, /quit leaves"
    )
    while True:
        try:
            message = input("you> ")
        except EOFError:
            return 0
        if message.strip() == "/quit":
            return 0
        if message.strip() == "/clear":
            session.clear()
            continue
        if not message.strip():
            continue
        print("model> ", end="", flush=True)
        for piece in session.stream(message):
            print(piece, end="", flush=True)
        print()


if __name__ == "__main__":
    raise SystemExit(main())
