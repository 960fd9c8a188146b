"""Milvus filter expressions from two sources: an alias's, which a request must not widen, and the request's.

The two are AND-ed as `(alias) and (request)`. That holds only if the request's expression cannot
close the alias's parenthesis: `x") or ("1" == "1` would turn the conjunction into a disjunction. So a
request filter must be balanced (every parenthesis closed, none closed before it opened) outside its
string literals. Milvus parses the rest and refuses what it cannot parse (400 `invalid_filter`).
"""

from __future__ import annotations

from llm_serve.rag.errors import RagError

QUOTES = "\"'"


def check_balanced(expr: str) -> str:
    """`expr` when its parentheses balance outside string literals; RagError (invalid_filter) otherwise."""
    depth, quote, escaped = 0, "", False
    for ch in expr:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in QUOTES:
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
    if depth != 0 or quote:
        raise RagError(
            f"filter {expr!r} has unbalanced parentheses or quotes",
            kind="invalid_request",
            code="invalid_filter",
            param="filter",
        )
    return expr


def and_filters(base: str | None, extra: str | None) -> str | None:
    """Both filters must hold; an empty one adds nothing (it never removes the other)."""
    base, extra = (base or "").strip(), (extra or "").strip()
    if extra:
        check_balanced(extra)
    if base and extra:
        return f"({base}) and ({extra})"
    return base or extra or None
