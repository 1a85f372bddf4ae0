"""``python -m comfy_kiwi <verb>``: the library's jobs from a shell.

Every verb calls the same library objects the ComfyUI nodes and the trainer use.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import prog_name, run_verb


def _cmd_info(args) -> int:
    from .loading.inspect import describe
    print(json.dumps(describe(args.path), indent=2, default=str))
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` only where it says something: not for flags, not for None, not where the help
    already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog_name("comfy_kiwi"),
                                description="Instruction- and reference-guided video editing on Wan DiTs.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    info = sub.add_parser("info", help="describe a model file or folder as JSON (format, architecture, dtype)")
    info.add_argument("path", help="a .safetensors/.pt file, a model folder or a Kiwi-Edit release folder")
    info.set_defaults(run=_cmd_info)
    from .edit_command import add_edit_parser
    from .judging.judge_command import add_judge_parser
    from .loading.registry import kinds
    from .memory.plan_command import add_plan_parser
    add_edit_parser(sub)
    add_judge_parser(sub)
    add_plan_parser(sub)
    for kind in kinds():                    # verbs of registered folder kinds (the toy world's toy-data, toy-init)
        if kind.add_verbs is not None:
            kind.add_verbs(sub)
    for verb in sub.choices.values():
        verb.formatter_class = HelpFormatter
    return p


def main(argv=None) -> int:
    return run_verb(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
