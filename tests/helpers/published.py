"""Reading back a published study page: its notes (the bullet lines after the title), to render the CSV again."""

from __future__ import annotations

from pathlib import Path


def published_notes(page: Path, count: int, command: str) -> tuple[str, list[str]]:
    """The page's text and its ``count`` notes; the last one must be the run's ``Command: `<command>...`` line."""
    text = page.read_text()
    notes = [line.removeprefix("- ") for line in text.split("\n\n")[1].splitlines()]
    assert len(notes) == count and notes[-1].startswith(f"Command: `{command}"), notes
    return text, notes
