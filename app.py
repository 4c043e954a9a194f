"""Hugging Face Space entry point: chat with a lowres-ft model in the browser.

In a Space (SDK: gradio), put this file beside the run folder's config.json and adapter/
(or set LOWRES_RUN_DIR and LOWRES_ADAPTER), and list `lowres-ft[app]` in requirements.txt.
Locally: `python app.py` (or `python -m lowres_ft.app --run-dir runs/demo`).
"""

import os

from lowres_ft.app import load_app

demo = load_app(
    os.environ.get("LOWRES_RUN_DIR", "."),
    adapter=os.environ.get("LOWRES_ADAPTER") or None,  # default: <run dir>/adapter if present
    model=os.environ.get("LOWRES_MODEL", "embedded"),  # base model when there is no config.json
)

if __name__ == "__main__":
    demo.launch()
