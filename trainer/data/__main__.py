"""``python -m trainer.data <verb>``: dataset tools (see :mod:`trainer.data`)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.data", description="Dataset tools of the comfy-kiwi trainer.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    from .build_references import add_parser as add_build_references
    add_build_references(sub)
    return p


def main(argv=None) -> int:
    from comfy_kiwi.errors import KiwiError
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KiwiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
