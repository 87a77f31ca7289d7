#!/usr/bin/env python3
"""Prints the README's option table, generated from spawning.config.OPTIONS.

Usage: ``python tools/gen_options_table.py > docs/options.md`` (or paste into README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spawning.config import markdown_table

if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
