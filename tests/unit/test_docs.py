"""The configuration reference is generated from the directive table: they cannot drift."""

from __future__ import annotations

from pathlib import Path

from portico.config import directives
from portico.config.docs import render

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == render(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m portico.config.docs > docs/configuration.md`"
    )


def test_every_directive_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in directives.TABLE:
        assert f"### {name}\n" in text
