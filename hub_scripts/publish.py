"""Runnable publishing script: ``python -m svdquant_hf.hub_scripts.publish FOLDER REPO_ID [options]``.

Same options as ``svdquant-hf push`` (--private, --revision, --create-pr, --dry-run, --overwrite, ...).
"""
from __future__ import annotations

import sys

from svdquant_hf.cli import main


def run(argv: list[str] | None = None) -> int:
    return main(["push", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(run())
