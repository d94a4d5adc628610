"""The sample use case shipped with qlgate: routing support tickets of a fictional store.

Training data (``data/sample/raw.jsonl``) and the golden set (``golden/``) share this prompt, so
the README pipeline measures what training taught.
"""

from __future__ import annotations

LABELS: tuple[str, ...] = ("account", "billing", "returns", "shipping")

SYSTEM_PROMPT = (
    "You are a support ticket router for Northwind Goods. Classify the customer's message into "
    "exactly one of: account, billing, returns, shipping. Reply with the label only."
)
