"""PII never survives scrubbing, for generated PII of every kind in every disguise, placed next to
digits, letters of many scripts, punctuation and markup; scrubbing is idempotent on such texts.

The example count comes from ``QLGATE_PII_EXAMPLES`` (default 1,500, about 10-20 s here); the
acceptance run uses 20,000:

    QLGATE_PII_EXAMPLES=20000 .venv/bin/python -m pytest tests/training/test_pii_property.py -q
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pii_strategies import neighbours, pii, separators

from training.pii import scrub_text

EXAMPLES = int(os.environ.get("QLGATE_PII_EXAMPLES", "1500"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    before=neighbours,
    left=separators,
    value=pii,
    right=separators,
    after=neighbours,
)
def test_generated_pii_never_survives_anywhere(
    before: str, left: str, value: tuple[str, str], right: str, after: str
) -> None:
    """A PII value of any kind, next to any neighbouring text, is gone after one scrub, and a
    second scrub changes nothing and finds nothing."""
    written, secret = value
    assume(secret not in before and secret not in after)
    text = f"{before}{left}{written}{right}{after}"
    once = scrub_text(text)
    assert secret not in once.text, (text, once.text)
    assert once.counts
    twice = scrub_text(once.text)
    assert twice.text == once.text
    assert twice.counts == {}


@settings(max_examples=max(300, EXAMPLES // 5), deadline=None)
@given(st.text(max_size=120))
def test_scrubbing_arbitrary_text_is_idempotent(text: str) -> None:
    """On any text at all, scrubbing scrubbed text changes nothing and finds nothing more."""
    once = scrub_text(text)
    twice = scrub_text(once.text)
    assert twice.text == once.text
    assert twice.counts == {}
