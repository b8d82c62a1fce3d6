"""Text from users made safe for each output format.

Step names, errors and outputs come from users and from stored records: every label
and tooltip passes through here on its way into Mermaid, DOT or SVG. Characters XML
cannot carry at all (most control characters, lone surrogates) are replaced first.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

#: Characters XML 1.0 does not allow even escaped, and lone surrogates (not UTF-8).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x85\u2028\u2029]+")


def clean(text: object) -> str:
    """`text` as a string XML can hold: forbidden characters become U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))


def one_line(text: object) -> str:
    """`text` cleaned, its line breaks and tabs turned into single spaces."""
    return _LINE_BREAKS.sub(" ", clean(text)).strip()


def xml_text(text: object) -> str:
    """Character data for an SVG element (``&``, ``<`` and ``>`` escaped)."""
    return escape(clean(text))


def xml_attr(text: object) -> str:
    """A quoted SVG attribute value, quotes included (both kinds of quote are safe)."""
    return quoteattr(one_line(text))


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "\u2026"
