"""Text from outside billsync: which characters it refuses, and JSON decoding that fails cleanly.

One rule for every name and value billsync stores or looks up (account names, dimension values,
the path and query of a request): no

- C0 and C1 control characters, NUL among them — PostgreSQL cannot store NUL in text while SQLite
  can, so without this rule the two stores would answer the same input differently;
- Unicode line and paragraph separators, bidirectional embeddings, overrides and isolates — they
  make text display otherwise than it reads (in the console, a log line, an invoice);
- lone surrogates — they are not text: no UTF-8 encodes them, and no store or JSON encoder
  takes them.

Identifiers have stricter rules of their own (printable text, or a fixed alphabet).
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

T = TypeVar("T")

# The refused characters as the body of a regular-expression class, read alike by Python and
# by JSON Schema (ECMA-262 with the "u" flag, or Rust). Lone surrogates are not among them: a
# JSON Schema regular expression cannot name them (it matches Unicode scalar values only), and
# no UTF-8 text carries them.
UNSAFE_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069"
# A whole string free of them, as a JSON Schema ``pattern``.
SAFE_TEXT_PATTERN = rf"^[^{UNSAFE_CHARACTERS}]*$"
# In Python, lone surrogates too: a JSON escape ("\ud800") or an undecodable command-line
# argument makes one.
_UNSAFE = re.compile(rf"[{UNSAFE_CHARACTERS}\ud800-\udfff]")

TOO_DEEP = "the JSON nests arrays or objects too deeply"
NOT_UTF8 = "the JSON is not UTF-8 text"


def unsafe_character(text: str) -> str | None:
    """The first character of ``text`` the rule refuses, or None."""
    found = _UNSAFE.search(text)
    return None if found is None else found.group()


def unsafe_message(what: str, character: str) -> str:
    """Why ``what`` is refused, naming the character by its code point (it may not print)."""
    return (
        f"{what} contains U+{ord(character):04X}: control characters, line separators, "
        "bidi overrides and lone surrogates are refused"
    )


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes | str) -> T:
    """``decoder.decode(body)``, with every way the body can be unreadable raised as
    ``msgspec.DecodeError`` (never ``ValidationError``, so "unreadable" stays distinct from
    "readable but of the wrong shape"): besides malformed JSON, nesting deeper than the
    interpreter's recursion limit (msgspec raises ``RecursionError``) and strings that are not
    UTF-8 (``UnicodeDecodeError``)."""
    try:
        return decoder.decode(body)
    except RecursionError:
        raise msgspec.DecodeError(TOO_DEEP) from None
    except UnicodeDecodeError:
        raise msgspec.DecodeError(NOT_UTF8) from None
