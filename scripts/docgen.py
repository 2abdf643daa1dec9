"""What the generated-docs scripts share: write the reference, or with ``--check`` say it drifted.

``gen_config_docs.py`` and ``gen_api_docs.py`` each render one file from the code; ``main`` here
parses their command line and writes it, or exits 1 when the file on disk differs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str], *, description: str, output: Path, render: Callable[[], str], script: str) -> int:
    """Write ``render()`` to ``output``; with ``--check``, exit 1 (naming ``script``) when it differs."""
    name = output.relative_to(ROOT)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {name} is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            print(f"{name} is out of date: run scripts/{script}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text)
    return 0
