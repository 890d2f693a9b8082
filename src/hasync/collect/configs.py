"""Configs in a bundle: re-emitted from their parsed values (tomli-w) with secrets masked, comments dropped."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w

from hasync.masking import MASK, Masker


def masked_config(path: Path, masker: Masker) -> str:
    """The config file at `path` as TOML with secrets masked and comments dropped.

    Only the parsed values are written: comments may hold anything, and files the config points to
    (token file, TLS key) are never read."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # Never fall back to the raw text: it is exactly what could not be masked.
        return f"# {path.name}: not included, it cannot be read as TOML now ({type(exc).__name__})\n"
    head = f"# {path.name} as read by hasync collect: secrets replaced by {MASK}, comments left out\n\n"
    return head + tomli_w.dumps(masker.json(data))
