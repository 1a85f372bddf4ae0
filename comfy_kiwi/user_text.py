"""Checks on text a user types (instructions, captions): a clear error instead of a tokenizer crash.

Text from a shell that is not UTF-8 reaches Python as lone surrogates (``surrogateescape``); tokenizers
then fail with a TypeError from deep inside. Very long text is almost always a mistake (a file pasted
into the instruction box) and would cost minutes of encoding before failing on the model's context.
"""

from __future__ import annotations

from .errors import InputError

MAX_TEXT_CHARS = 10_000     # an edit instruction is a sentence or a paragraph; this is pages


def check_user_text(text, what: str = "instruction", max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` unchanged if it is a str of valid UTF-8 of at most ``max_chars`` characters."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be text, got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} is not valid UTF-8 text (undecodable byte at character {e.start}); "
                         "save or type it as UTF-8.") from None
    if len(text) > max_chars:
        raise InputError(f"{what} is {len(text)} characters long; at most {max_chars} are accepted "
                         "(an edit instruction is a sentence or a short paragraph).")
    return text
