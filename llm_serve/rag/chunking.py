"""A recursive splitter whose sizes are counted in the embedding model's tokens.

Counting characters would overrun the embedder's 256-token window on token-dense text (numbers,
code) and waste it on prose; counting the model's own tokens keeps every chunk embeddable whole.
Text is cut at the coarsest boundary that works (paragraph, line, sentence, word, character) and
pieces are packed greedily, each chunk repeating up to `overlap` tokens of the previous one's end.
"""

from __future__ import annotations

from collections.abc import Callable

SEPARATORS = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", "")
TokenCounter = Callable[[str], int]


def _split_keep(text: str, separator: str) -> list[str]:
    """Split after each separator, keeping it on the left piece so joining restores the text."""
    if separator == "":
        return list(text)
    parts = text.split(separator)
    return [p + separator for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _atoms(text: str, count: TokenCounter, size: int, separators: tuple[str, ...]) -> list[str]:
    """Pieces of `text` no larger than `size` tokens, cut at the coarsest separator possible."""
    if count(text) <= size:
        return [text]
    for i, separator in enumerate(separators):
        if separator and separator not in text:
            continue
        pieces = _split_keep(text, separator)
        if len(pieces) <= 1 and separator:
            continue
        out: list[str] = []
        for piece in pieces:
            out.extend(_atoms(piece, count, size, separators[i + 1 :]) if count(piece) > size else [piece])
        return out
    return [text]


def _tail(pieces: list[tuple[str, int]], count: TokenCounter, budget: int) -> list[tuple[str, int]]:
    """Up to `budget` tokens from the end of `pieces`, cutting the last piece finer when it is too big."""
    out: list[tuple[str, int]] = []
    used = 0
    for piece, n in reversed(pieces):
        if used + n <= budget:
            out.insert(0, (piece, n))
            used += n
            continue
        for finer in reversed([p for p in _atoms(piece, count, max(1, budget - used), SEPARATORS) if p]):
            k = count(finer)
            if used + k > budget:
                break
            out.insert(0, (finer, k))
            used += k
        break
    return out


def split_text(text: str, count: TokenCounter, size: int, overlap: int) -> list[str]:
    """Chunks of at most `size` tokens (as `count` measures them) that overlap by up to `overlap` tokens."""
    if size <= 0 or overlap < 0 or overlap >= size:
        raise ValueError("need 0 <= overlap < size")
    chunks: list[str] = []
    current: list[tuple[str, int]] = []
    total = 0
    for atom in (a for a in _atoms(text, count, size, SEPARATORS) if a):
        n = count(atom)
        if current and total + n > size:
            chunks.append("".join(piece for piece, _ in current).strip())
            # The next chunk starts with the end of this one: up to `overlap` tokens, and never so much
            # that the new atom would not fit beside it.
            current = _tail(current, count, min(overlap, size - n))
            total = sum(k for _, k in current)
        current.append((atom, n))
        total += n
    if current:
        chunks.append("".join(piece for piece, _ in current).strip())
    return [c for c in chunks if c]
