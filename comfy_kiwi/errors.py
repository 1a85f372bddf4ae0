"""User-facing error types.

Every error a user can cause (a wrong file, a bad frame count, a missing package) is raised as a
subclass of :class:`KiwiError` with a message that says what was wrong and what is accepted.
They also subclass the matching builtin so callers that catch ``ValueError`` keep working.
"""


class KiwiError(Exception):
    """Base class of every error comfy-kiwi raises on purpose."""


class CheckpointError(KiwiError, ValueError):
    """A model file or folder is missing, unreadable, of an unknown kind, or has wrong keys/shapes."""


class InputError(KiwiError, ValueError):
    """An input (frames, sizes, latents, text, options) is not one the code accepts."""


class BackendUnavailableError(KiwiError, RuntimeError):
    """A requested backend (attention kernel, device, codec) cannot run on this machine."""
