"""Reading scores and boxes out of free-form model answers.

Judges rarely answer exactly as asked. The parsers here accept:

* JSON (also inside a ```json code fence or surrounded by prose), with the scores at the top level or
  nested (``{"scores": {...}}``), keyed by the answer label or the snake_case key, each value a number,
  a numeric string, a fraction string or an object with a ``score``/``value`` field;
* "Name: value" lines, in any order, with markdown decoration (``**Name**: 4``, ``- Name = 4``), an
  optional parenthesised note after the name (``Name (1-5): 4``), and prose around them;
* values as integers, decimals (kept as they are unless ``truncate=True``, which applies the
  ``int(float(v))`` rule of the released OpenVE evaluation) or fractions ``4/5``, ``27 out of 30``
  whose denominator must be the dimension's maximum.

A range such as ``Name: 1-5`` (the judge echoing the prompt) is not read as a score. When a label
occurs several times the last scored occurrence wins (answers come after any echoed rubric). Anything
missing, malformed or out of range raises :class:`AnswerParseError` with the reason, so the caller can
retry; nothing is ever guessed.
"""

from __future__ import annotations

import json
import math
import re

from ..errors import InputError
from .rubrics import Dimension, Rubric

__all__ = ["AnswerParseError", "strip_code_fences", "find_json_values", "parse_scores", "parse_boxes",
           "parse_value"]


class AnswerParseError(InputError):
    """A model answer could not be read as the requested scores/boxes (the message says why)."""


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.S)
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_VALUE = re.compile(rf"^\s*({_NUM})\s*(?:(?:/|out\s+of)\s*({_NUM}))?", re.I)


def strip_code_fences(text: str) -> str:
    """The contents of markdown code fences joined (or the text itself when it has none)."""
    blocks = _FENCE.findall(text)
    if blocks:
        return "\n".join(blocks)
    return text.replace("```", "")


def _scan_json(text: str, start: int) -> int | None:
    """End index (exclusive) of the balanced {...} / [...] starting at ``start``, strings respected."""
    stack, in_str, esc = [], False, False
    pairs = {"{": "}", "[": "]"}
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c in pairs:
            stack.append(pairs[c])
        elif c in "}]":
            if not stack or stack.pop() != c:
                return None
            if not stack:
                return i + 1
    return None


def _loads_lenient(chunk: str):
    try:
        return json.loads(chunk)
    except json.JSONDecodeError:
        pass
    fixed = re.sub(r",\s*([}\]])", r"\1", chunk)             # trailing commas
    if '"' not in fixed:
        fixed = fixed.replace("'", '"')                        # Python-style quotes
    try:
        return json.loads(fixed)
    except json.JSONDecodeError:
        return None


def find_json_values(text: str) -> list:
    """Every top-level JSON object/array found in ``text`` (fences stripped), in order."""
    text = strip_code_fences(text)
    out, i = [], 0
    while i < len(text):
        if text[i] in "{[":
            end = _scan_json(text, i)
            if end is not None:
                value = _loads_lenient(text[i:end])
                if value is not None:
                    out.append(value)
                    i = end
                    continue
        i += 1
    return out


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------

def _number(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(s)
    return v


def parse_value(raw, dim: Dimension, truncate: bool = False) -> float:
    """One score value (number, numeric string, fraction) checked against ``dim``'s range."""
    if isinstance(raw, bool):
        raise AnswerParseError(f"{dim.label}: {raw!r} is not a score.")
    if isinstance(raw, dict):
        for k in ("score", "value", "rating", "points"):
            if k in raw:
                return parse_value(raw[k], dim, truncate)
        raise AnswerParseError(f"{dim.label}: object without a score field: {json.dumps(raw)[:80]}.")
    if isinstance(raw, (int, float)):
        value = float(raw)
        if not math.isfinite(value):
            raise AnswerParseError(f"{dim.label}: {raw!r} is not a finite number.")
    elif isinstance(raw, str):
        m = _VALUE.match(raw.replace("**", ""))
        if not m:
            raise AnswerParseError(f"{dim.label}: {raw[:40]!r} is not a number.")
        value = _value_from_match(m.group(1), m.group(2), dim)
    else:
        raise AnswerParseError(f"{dim.label}: {type(raw).__name__} is not a score.")
    if truncate:
        value = float(math.trunc(value))
    if not dim.in_range(value):
        raise AnswerParseError(f"{dim.label}: {value:g} is outside the scale {dim.low:g}-{dim.high:g}.")
    return value


def _value_from_match(num: str, den: str | None, dim: Dimension) -> float:
    value = _number(num)
    if den is not None:
        d = _number(den)
        if d != dim.high:
            raise AnswerParseError(f"{dim.label}: fraction {num}/{den} does not use the {dim.low:g}-{dim.high:g} "
                                   f"scale (denominator must be {dim.high:g}).")
    return value


# ---------------------------------------------------------------------------------------------
# scores: JSON
# ---------------------------------------------------------------------------------------------

def _norm(name: str) -> str:
    name = name.lower().replace("&", " and ")
    words = re.findall(r"[a-z0-9]+", name)
    return " ".join(w for w in words if w != "and")


def _json_scores(values: list, rubric: Rubric, truncate: bool) -> dict[str, float]:
    lookup = {_norm(n): d for d in rubric.dimensions for n in d.names()}
    found: dict[str, float] = {}
    errors: list[str] = []

    def visit(node, depth=0):
        if depth > 4:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                dim = lookup.get(_norm(str(k)))
                if dim is not None and not isinstance(v, (list,)):
                    try:
                        found[dim.key] = parse_value(v, dim, truncate)
                    except AnswerParseError as e:
                        errors.append(str(e))
                elif isinstance(v, (dict, list)):
                    visit(v, depth + 1)
        elif isinstance(node, list):
            for v in node:
                visit(v, depth + 1)

    for value in values:
        visit(value)
    if errors and len(found) < len(rubric.dimensions):
        raise AnswerParseError("; ".join(errors))
    return found


# ---------------------------------------------------------------------------------------------
# scores: "Name: value" lines
# ---------------------------------------------------------------------------------------------

def _name_pattern(name: str) -> str:
    words = [w for w in re.findall(r"[a-z0-9]+", name.lower()) if w != "and"]
    gap = r"[\s_\-*&/]*(?:and[\s_\-*]+)?"
    return r"(?<![a-z0-9])" + gap.join(re.escape(w) for w in words) + r"(?![a-z0-9])"


_AFTER_NAME = (r"[\s*_\"'`]*(?:\([^)\n]{0,40}\)[\s*_\"'`]*)?"         # optional "(1-5)" note
               r"(?:[:=]|\s[-\u2013\u2014]\s|is\b)[\s*_\"'`]*")        # separator
_RANGE_AFTER = re.compile(r"\s*(?:-|\u2013|\u2014|to)\s*\d")


def _line_scores(text: str, rubric: Rubric, truncate: bool) -> tuple[dict[str, float], list[str]]:
    found: dict[str, float] = {}
    errors: list[str] = []
    lowered = text.lower()
    for dim in rubric.dimensions:
        best: tuple[int, str, str | None] | None = None
        for name in dim.names():
            pat = re.compile(_name_pattern(name) + _AFTER_NAME + rf"({_NUM})"
                             rf"(?:\s*(?:/|out\s+of)\s*({_NUM}))?", re.I)
            for m in pat.finditer(lowered):
                if m.group(2) is None and _RANGE_AFTER.match(lowered, m.end()):
                    continue                                 # "Name: 1-5" echoes the scale
                if best is None or m.start() > best[0]:
                    best = (m.start(), m.group(1), m.group(2))
        if best is None:
            continue
        try:
            value = _value_from_match(best[1], best[2], dim)
            value = parse_value(value, dim, truncate)
        except AnswerParseError as e:
            errors.append(str(e))
            continue
        found[dim.key] = value
    return found, errors


def parse_scores(text: str, rubric: Rubric, truncate: bool = False) -> dict[str, float]:
    """All of ``rubric``'s scores from one answer, or :class:`AnswerParseError`.

    JSON wins when it holds every score; otherwise "Name: value" lines are read. A single-dimension
    rubric also accepts an answer that is nothing but the number (``7``, ``7/10``, ``Score: 7``).
    """
    if not isinstance(text, str) or not text.strip():
        raise AnswerParseError("empty answer.")
    body = strip_code_fences(text)
    json_found = _json_scores(find_json_values(text), rubric, truncate)
    if len(json_found) == len(rubric.dimensions):
        return {k: json_found[k] for k in rubric.keys}
    found, errors = _line_scores(body, rubric, truncate)
    for key, value in json_found.items():
        found.setdefault(key, value)
    if len(rubric.dimensions) == 1 and not found and not errors:
        dim = rubric.dimensions[0]
        bare = body.strip().strip(".").replace("**", "").strip()
        m = re.fullmatch(rf"(?:score\s*[:=]?\s*)?({_NUM})(?:\s*(?:/|out\s+of)\s*({_NUM}))?", bare, re.I)
        if m:
            found[dim.key] = parse_value(_value_from_match(m.group(1), m.group(2), dim), dim, truncate)
    if errors:
        raise AnswerParseError("; ".join(errors))
    missing = [d.label for d in rubric.dimensions if d.key not in found]
    if missing:
        raise AnswerParseError(f"no score found for {', '.join(missing)} (answer: {_preview(text)}).")
    return {k: found[k] for k in rubric.keys}


def _preview(text: str, n: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= n else flat[:n] + "...")


# ---------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------

_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d", "bounding_box")
_PAIR_BOX = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_LIST_BOX = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


def _as_box(value) -> tuple[float, float, float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return tuple(float(v) for v in value)
    return None


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x1, y1, x2, y2)`` in the answer's own coordinates, in answer order.

    Accepted: JSON objects with ``bbox_2d`` (Qwen2.5-VL) / ``bbox`` / ``box`` (also in a list), bare
    JSON ``[x1, y1, x2, y2]`` lists, and Qwen2-VL's ``(x1,y1),(x2,y2)`` pairs. Raises
    :class:`AnswerParseError` when there is none.
    """
    if not isinstance(text, str) or not text.strip():
        raise AnswerParseError("empty answer.")
    boxes: list[tuple[float, float, float, float]] = []

    def visit(node, depth=0):
        if depth > 5:
            return
        if isinstance(node, dict):
            for k in _BOX_KEYS:
                box = _as_box(node.get(k))
                if box is not None:
                    boxes.append(box)
                    return
            for v in node.values():
                if isinstance(v, (dict, list)):
                    visit(v, depth + 1)
        elif isinstance(node, list):
            box = _as_box(node)
            if box is not None:
                boxes.append(box)
                return
            for v in node:
                visit(v, depth + 1)

    for value in find_json_values(text):
        visit(value)
    if boxes:
        return boxes
    body = strip_code_fences(text)
    for m in _PAIR_BOX.finditer(body):
        boxes.append(tuple(float(g) for g in m.groups()))
    if not boxes:
        for m in _LIST_BOX.finditer(body):
            boxes.append(tuple(float(g) for g in m.groups()))
    if not boxes:
        raise AnswerParseError(f"no bounding box found (answer: {_preview(text)}).")
    return boxes
