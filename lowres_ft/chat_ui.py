"""The notebook chat: an ipywidgets view (text box, send, clear, preset and temperature) over a
`ChatSession`, streaming each reply into the page as it is generated.

`ChatWidget.send` is what the Send button calls, so a notebook run headless (papermill) can
script an exchange through the same path a user's click takes.
"""

from __future__ import annotations

import html
from dataclasses import replace
from typing import Any

from lowres_ft.generate import PRESETS, ChatSession, Reply


class ChatWidget:
    def __init__(self, session: ChatSession, title: str = "lowres-ft chat") -> None:
        import ipywidgets as widgets

        self.session = session
        self.transcript: list[tuple[str, str]] = []  # (role, text) as shown
        self.last_reply: Reply | None = None
        self.chat_view = widgets.HTML(layout=widgets.Layout(min_height="120px"))
        self.message = widgets.Textarea(
            placeholder="আপনার বার্তা লিখুন… (type a message)",
            layout=widgets.Layout(width="100%", height="64px"),
        )
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.clear_button = widgets.Button(description="Clear")
        self.preset = widgets.Dropdown(
            options=list(PRESETS), value=session.settings.preset, description="Preset"
        )
        self.temperature = widgets.FloatSlider(
            value=session.settings.temperature,
            min=0.0,
            max=1.5,
            step=0.05,
            description="Temperature",
        )
        self.status = widgets.Label()
        self.send_button.on_click(lambda _: self.send(self.message.value))
        self.clear_button.on_click(lambda _: self.clear())
        controls = widgets.HBox([self.preset, self.temperature])
        buttons = widgets.HBox([self.send_button, self.clear_button, self.status])
        self.view = widgets.VBox(
            [
                widgets.HTML(f"<b>{html.escape(title)}</b>"),
                self.chat_view,
                self.message,
                buttons,
                controls,
            ]
        )
        self._render()

    def _render(self, partial: str | None = None) -> None:
        rows = [*self.transcript, *([("assistant", partial)] if partial is not None else [])]
        self.chat_view.value = "".join(
            f"<div style='margin:4px 0'><b>{'You' if role == 'user' else 'Model'}:</b> "
            f"{html.escape(text).replace(chr(10), '<br>')}</div>"
            for role, text in rows
        )

    def send(self, message: str) -> Reply | None:
        """Send a message and stream the reply into the view; returns the finished reply."""
        if not message.strip():
            self.status.value = "Type a message first."
            return None
        self.session.settings = replace(
            self.session.settings, preset=self.preset.value, temperature=self.temperature.value
        )
        self.message.value = ""
        self.transcript.append(("user", message))
        self.send_button.disabled = True
        self.status.value = "generating…"
        text = ""
        try:
            for piece in self.session.stream(message):
                text += piece
                self._render(partial=text)
        finally:
            self.send_button.disabled = False
        self.transcript.append(("assistant", text))
        self._render()
        self.last_reply = self.session.last_reply
        reason = self.last_reply.stop_reason if self.last_reply else "?"
        self.status.value = f"{len(text)} characters, stopped at: {reason}"
        return self.last_reply

    def clear(self) -> None:
        self.session.clear()
        self.transcript = []
        self.status.value = "cleared"
        self._render()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.view._repr_mimebundle_(**kwargs)
