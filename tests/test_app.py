"""The Gradio chat app, driven by a real headless Chromium (Debian's /usr/bin/chromium, through
Playwright's bundled driver; no browser download) over the embedded SmolLM2 model: the reply
streams into the page, the Bengali message is shown intact, the response log gets the turn,
and Clear (the button or the chat's trash icon) empties both the page and the model's history."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowres_ft.config import RunConfig
from lowres_ft.generate import ChatModel, ResponseLog

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps reaching for Google's services and
# misbehaves on a closed network; the resolver rule fails any other host at once, so nothing
# on the page can wait on the network (Gradio's own fonts and scripts come from the app).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
# The embedded model answers this with a run of Bengali letters and few spaces: the reply must
# still reach the page in pieces (the streamer releases whole characters, not whole words).
MESSAGE = "বাংলাদেশের রাজধানী কী?"
SECOND = "নমস্কার, আপনি কেমন আছেন?"
REPLY_TOKENS = 24  # a few seconds of generation on a CPU
WAIT_MS = 180_000  # generous: a loaded 2-core CI machine generates about a token a second

# Records each distinct text of the newest reply as the page changes, to prove streaming.
WATCH_REPLY = """() => {
  window.replyTexts = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    const seen = window.replyTexts;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(chat, {childList: true, subtree: true, characterData: true});
}"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_rows(log: ResponseLog, count: int) -> list[dict]:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        rows = log.read()
        if len(rows) >= count:
            return rows
        time.sleep(0.2)
    pytest.fail(f"no reply logged in {log.jsonl} within {WAIT_MS // 1000} s")


def _fake_chat_model() -> ChatModel:
    return ChatModel(model=None, tokenizer=None, model_id="embedded")


def test_missing_gradio_names_the_extra(monkeypatch):
    from lowres_ft import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    with pytest.raises(app.AppError, match=r"pip install 'lowres-ft\[app\]'"):
        app.build_app(_fake_chat_model(), RunConfig())


def test_load_app_uses_the_runs_config_and_adapter(tmp_path, monkeypatch):
    from lowres_ft import app

    RunConfig(run_dir="elsewhere", max_new_tokens=7, system_prompt="বাংলায় উত্তর দাও।").save(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    loaded = []
    monkeypatch.setattr(
        app, "load_chat_model", lambda config, adapter: loaded.append((config, adapter))
    )
    monkeypatch.setattr(app, "build_app", lambda chat_model, config: "demo")

    assert app.load_app(tmp_path) == "demo"
    config, adapter = loaded[0]
    assert (config.run_dir, config.max_new_tokens) == (str(tmp_path), 7)  # the moved folder
    assert config.system_prompt == "বাংলায় উত্তর দাও।"
    assert adapter == tmp_path / "adapter"


def test_load_app_without_a_run_uses_the_base_model(tmp_path, monkeypatch):
    from lowres_ft import app

    loaded = []
    monkeypatch.setattr(
        app, "load_chat_model", lambda config, adapter: loaded.append((config, adapter))
    )
    monkeypatch.setattr(app, "build_app", lambda chat_model, config: "demo")

    app.load_app(tmp_path / "new_run")
    config, adapter = loaded[0]
    assert (config.model_name, config.run_dir, adapter) == (
        "embedded",
        str(tmp_path / "new_run"),
        None,
    )


@pytest.fixture(scope="module")
def served_app(tmp_path_factory) -> Iterator[tuple[str, ResponseLog]]:
    """The app on the embedded model, on a free localhost port, in a background thread."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `make install` installs Debian's chromium package")
    from lowres_ft.app import build_app
    from lowres_ft.generate import load_chat_model

    run_dir = tmp_path_factory.mktemp("app_run")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # no version check or analytics calls
        config = RunConfig(run_dir=str(run_dir), max_new_tokens=REPLY_TOKENS)
        demo = build_app(load_chat_model(config), config)
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/", ResponseLog(run_dir)
        finally:
            demo.close()


@pytest.fixture()
def page(tmp_path):
    """A fresh headless Chromium profile; Playwright's launch adds --headless."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium_profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


# Gradio's queue statistics call pandas APIs that pandas 3 deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")
def test_browser_chat_streams_logs_and_clears(served_app, page):
    from playwright.sync_api import expect

    url, log = served_app
    page.goto(url)
    user_messages = page.locator('#chatbot [data-testid="user"]')
    replies = page.locator('#chatbot [data-testid="bot"]')
    expect(page.locator("#send")).to_be_visible()
    page.evaluate(WATCH_REPLY)

    page.locator("#message textarea").fill(MESSAGE)
    page.locator("#send").click()
    row = _wait_for_rows(log, 1)[0]

    assert row["prompt"] == MESSAGE and row["history_turns"] == 0
    assert row["reply"].strip(), "the logged reply is empty"
    final = " ".join(row["reply"].split())
    expect(replies.last).to_have_text(final, timeout=WAIT_MS)
    expect(user_messages).to_have_count(1)
    assert user_messages.first.inner_text().strip() == MESSAGE  # Bengali shown intact
    partials = [t for t in page.evaluate("window.replyTexts") if " ".join(t.split()) != final]
    assert len(set(partials)) >= 2, f"the reply did not stream: texts seen {partials}"
    assert all(final.startswith(" ".join(t.split())) for t in partials), partials
    csv_text = log.csv.read_text("utf-8")
    assert MESSAGE in csv_text and json.loads(log.jsonl.read_text("utf-8").splitlines()[0])

    page.locator("#clear").click()
    expect(user_messages).to_have_count(0)
    expect(replies).to_have_count(0)

    page.locator("#message textarea").fill(SECOND)
    page.locator("#message textarea").press("Enter")
    second = _wait_for_rows(log, 2)[1]
    assert second["prompt"] == SECOND
    assert second["history_turns"] == 0, "Clear left the earlier turn in the model's history"
    expect(user_messages).to_have_count(1)
    expect(user_messages.first).to_have_text(SECOND)

    page.locator('#chatbot button[aria-label="Clear"]').click()  # the chat's own trash icon
    expect(user_messages).to_have_count(0)
    page.locator("#message textarea").fill(MESSAGE)
    page.locator("#send").click()
    third = _wait_for_rows(log, 3)[2]
    assert third["history_turns"] == 0, "the trash icon left earlier turns in the history"
