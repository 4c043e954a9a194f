"""Chat app (Gradio) over the same generation code as the notebooks: presets, sampling,
stopping at the danda, streaming, chat history within the context window, and the response
log. Gradio is an optional extra: pip install 'lowres-ft[app]'.

python -m lowres_ft.app --run-dir runs/demo      # the run's adapter on http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowres_ft.config import CONFIG_FILE, LowresError, RunConfig, inherit_config
from lowres_ft.generate import (
    PRESETS,
    ChatModel,
    ChatSession,
    GenerationError,
    GenerationSettings,
    ResponseLog,
    load_chat_model,
)

if TYPE_CHECKING:
    import gradio

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lowres-ft[app]'"
# Shown on the length control: the presets' token counts (0: what the context leaves)
PRESET_LABELS = [(f"{name} ({tokens or 'context'})", name) for name, tokens in PRESETS.items()]

History = list[dict[str, str]]


class AppError(LowresError, ImportError):
    """The chat app cannot start; the message says what to install or change."""


def _gradio() -> Any:
    try:
        import gradio
    except ImportError as error:
        raise AppError(
            f"the chat app needs Gradio, an optional extra that is not installed: {INSTALL_HINT}"
        ) from error
    return gradio


def build_app(
    chat_model: ChatModel, config: RunConfig, log: ResponseLog | None = None
) -> gradio.Blocks:
    """A chat page over `chat_model`: each browser session has its own ChatSession, replies
    stream as they are generated and every reply goes to the log (<run_dir> by default)."""
    gr = _gradio()
    log = log if log is not None else ResponseLog(config.run_dir)
    name = chat_model.model_id + (f" + {chat_model.adapter_id}" if chat_model.adapter_id else "")
    length_info = "reply length in new tokens"
    if config.max_new_tokens:
        length_info = f"max_new_tokens={config.max_new_tokens} from the run's config wins"

    def respond(
        message: str, session: ChatSession | None, preset: str, temperature: float, stop: bool
    ) -> Iterator[tuple[str, History, ChatSession | None]]:
        """Yields (text box, chat, session): the chat grows with each piece of the reply."""
        if session is None:  # the browser session's first message
            session = chat_model.session(
                GenerationSettings.from_config(config), config.system_prompt, log
            )
        session.settings = GenerationSettings.from_config(
            config, preset=preset, temperature=float(temperature), stop_at_sentence_end=stop
        )
        shown = list(session.history)
        reply = ""
        yield "", [*shown, {"role": "user", "content": message}], session
        try:
            for piece in session.stream(message):
                reply += piece
                chat = [*shown, {"role": "user", "content": message}]
                yield "", [*chat, {"role": "assistant", "content": reply}], session
        except GenerationError as error:  # an empty message, or no room left in the context
            yield message, shown, session
            raise gr.Error(str(error)) from error

    def clear(session: ChatSession | None) -> tuple[str, History, ChatSession | None]:
        if session is not None:
            session.clear()
        return "", [], session

    with gr.Blocks(title="lowres-ft chat") as demo:
        gr.Markdown(f"### Chat with `{name}`")
        chatbot = gr.Chatbot(
            elem_id="chatbot",
            label="Chat",
            height=460,
            feedback_options=None,
            buttons=["copy", "copy_all"],  # no "share": it posts to a Space's discussions
        )
        with gr.Row():
            message = gr.Textbox(
                elem_id="message",
                show_label=False,
                placeholder="Type a message: বাংলা, অসমীয়া, English...",
                scale=5,
                autofocus=True,
            )
            send = gr.Button("Send", elem_id="send", variant="primary", scale=1)
            clear_button = gr.Button("Clear", elem_id="clear", scale=1)
        with gr.Accordion("Generation settings", open=True), gr.Row():
            preset = gr.Radio(PRESET_LABELS, value=config.preset, label="Preset", info=length_info)
            temperature = gr.Slider(
                0.0,
                1.5,
                value=config.temperature,
                step=0.05,
                label="Temperature",
                info="0: greedy (repeatable); about 0.7 for livelier chat",
            )
            stop = gr.Checkbox(
                value=config.stop_at_sentence_end,
                label="Stop at the first sentence end (। ॥ . ? !)",
            )
        # None until the first message: gr.State deep-copies its initial value, and a session
        # holds the model, so each browser session builds its own in `respond`.
        session = gr.State(None)
        inputs = [message, session, preset, temperature, stop]
        outputs = [message, chatbot, session]
        for event in (send.click, message.submit):
            # One shared model: replies are generated one at a time, across all users.
            event(
                respond,
                inputs,
                outputs,
                concurrency_id="generate",
                concurrency_limit=1,
                show_progress="minimal",
            )
        clear_button.click(clear, [session], outputs, queue=False)
        chatbot.clear(clear, [session], outputs, queue=False)  # the chat's own trash icon
    return demo


def load_app(
    run_dir: str | Path, adapter: str | Path | None = None, model: str = "embedded"
) -> gradio.Blocks:
    """The app for a run folder: its saved config when it has one (else `model` with the
    defaults), and its adapter when one was trained (else the base model)."""
    _gradio()  # fail before the model loads
    folder = Path(run_dir)
    if (folder / CONFIG_FILE).exists():
        config, _ = inherit_config(str(folder))  # run_dir as given: the folder may have moved
    else:
        config = RunConfig(run_dir=str(folder), model_name=model)
    if adapter is None:
        found = config.adapter_path()
        adapter = found if (found / "adapter_config.json").exists() else None
    if adapter is None:
        logger.info("no adapter in %s: chatting with the base model %s", folder, config.model_name)
    return build_app(load_chat_model(config, adapter), config)


def launch(
    run_dir: str | Path,
    adapter: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    model: str = "embedded",
) -> None:
    """Serve the run's chat app until interrupted."""
    load_app(run_dir, adapter, model).launch(server_name=host, server_port=port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lowres_ft.app",
        description="Chat with a run's fine-tuned model in the browser (Gradio).",
    )
    parser.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument(
        "--adapter", default=None, help="LoRA adapter folder (default: <run-dir>/adapter if any)"
    )
    parser.add_argument(
        "--model",
        default="embedded",
        help="base model when the run folder has no config.json (default embedded)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves the network")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        launch(args.run_dir, args.adapter, args.host, args.port, args.model)
    except LowresError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
