"""The demo checkpoint: a small Llama that writes Python-documentation-like English.

Trained by scripts/train_demo_model.py on text that ships with the Python interpreter (see
data/demo/README.md). It lives inside the package, so that it is found from an installed refute
as well as from a checkout: `refute run --model "$(python -c 'import refute.demo_model as d;
print(d.DEMO_MODEL_DIR)')" --prompt "Return a new"`.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "data" / "demo"

# Prompts that the model continues with readable text.
DEMO_PROMPTS = ("Return a new", "If the", "This module", "The list")
DEMO_PROMPT = DEMO_PROMPTS[0]
