"""``python -m trainer.data <verb>``: dataset tools (see :mod:`trainer.data`)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.data", description="Dataset tools of the comfy-kiwi trainer.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    from .build_references import add_parser as add_build_references
    from .pairs_csv import add_parser as add_pairs_csv
    add_build_references(sub)
    add_pairs_csv(sub)
    return p


def main(argv=None) -> int:
    from comfy_kiwi.errors import run_verb
    return run_verb(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
