"""User-facing error types.

Every error a user can cause (a wrong file, a bad frame count, a missing package) is raised as a
subclass of :class:`KiwiError` with a message that says what was wrong and what is accepted.
They also subclass the matching builtin so callers that catch ``ValueError`` keep working.
:func:`run_verb` is how every shell entry point (``python -m comfy_kiwi``, ``python -m trainer``,
``python -m trainer.data``) reports them.
"""

import os
import sys


class KiwiError(Exception):
    """Base class of every error comfy-kiwi raises on purpose."""


class CheckpointError(KiwiError, ValueError):
    """A model file or folder is missing, unreadable, of an unknown kind, or has wrong keys/shapes."""


class InputError(KiwiError, ValueError):
    """An input (frames, sizes, latents, text, options) is not one the code accepts."""


class BackendUnavailableError(KiwiError, RuntimeError):
    """A requested backend (attention kernel, device, codec) cannot run on this machine."""


def prog_name(package: str) -> str:
    """What ``usage:`` calls the program: the console script's own name (``comfy-kiwi``), or
    ``python -m <package>`` when run as a module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"python -m {package}" if name in ("", "-c", "__main__.py") else name


def run_verb(parser, argv=None) -> int:
    """Parse ``argv`` with an argparse ``parser`` whose verbs set ``run``, run the chosen verb, and turn a
    KiwiError into one readable line on stderr and exit code 2 (no traceback)."""
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KiwiError as e:
        message = str(e)
    except OSError as e:        # a file the system refused (permissions, a full disk, a file where a folder was)
        message = f"cannot access{f' {e.filename}' if e.filename else ''}: {e.strerror or e}"
    # a path with undecodable bytes (surrogates) must not turn the error line itself into a crash
    print("error: " + message.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
    return 2
