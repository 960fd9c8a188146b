"""Read documents for ingestion: .txt, .md, .html, .pdf, and directories of them.

A file that cannot be used (binary, not UTF-8, empty, an unreadable PDF) raises LoadError with the
reason; the ingester reports it and goes on with the rest of the batch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES
BINARY_SNIFF_BYTES = 8192
NO_PAGE = -1


class LoadError(Exception):
    """This file is skipped; the message says why."""


@dataclass
class Document:
    """A loaded document: where it came from and its text, page by page (PDF) or whole (page -1)."""

    source: str
    pages: list[tuple[int, str]]

    @property
    def text(self) -> str:
        return "\n\n".join(text for _, text in self.pages)

    @property
    def doc_id(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:32]

    @property
    def doc_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:32]


def source_name(path: Path) -> str:
    """The name a document is known by: relative to the working directory when under it, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand directories (sorted, recursive); returns files to load and (path, reason) skipped."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []

    def consider(file: Path) -> None:
        if file.suffix.lower() in SUPPORTED:
            files.append(file)
        else:
            skipped.append((source_name(file), f"unsupported file type '{file.suffix or '(none)'}'"))

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if not any(part.startswith(".") for part in child.relative_to(path).parts):
                    consider(child)
        elif path.is_file():
            consider(path)
        else:
            skipped.append((str(path), "no such file or directory"))
    return files, skipped


def load(path: Path) -> Document:
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        pages = _load_pdf(path)
    else:
        text = _read_text(path)
        if suffix in HTML_SUFFIXES:
            text = html_to_text(text)
        pages = [(NO_PAGE, text)]
    pages = [(n, _normalize(t)) for n, t in pages]
    pages = [(n, t) for n, t in pages if t]
    if not pages:
        raise LoadError("empty: no text to index")
    return Document(source=source_name(path), pages=pages)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"unreadable: {exc.strerror or exc}") from None
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise LoadError("binary file (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"not UTF-8 text (byte {exc.start})") from None


def _load_pdf(path: Path) -> list[tuple[int, str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        return [(i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
    except (PdfReadError, OSError, ValueError, KeyError) as exc:
        raise LoadError(f"unreadable PDF: {exc}") from None


def _normalize(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page, with block elements as paragraph breaks."""

    SKIP = {"script", "style", "noscript", "template", "head"}
    BLOCKS = {
        "p",
        "div",
        "section",
        "article",
        "li",
        "ul",
        "ol",
        "table",
        "tr",
        "br",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "footer",
        "main",
        "nav",
        "pre",
        "blockquote",
        "dd",
        "dt",
        "title",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skip_depth += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP and self._skip_depth:
            self._skip_depth -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title.append(data)
        elif not self._skip_depth:
            self.parts.append(data)

    def text(self) -> str:
        body = "".join(self.parts)
        paragraphs = [" ".join(p.split()) for p in body.split("\n\n")]
        title = " ".join("".join(self._title).split())
        return "\n\n".join([title, *[p for p in paragraphs if p]] if title else [p for p in paragraphs if p])


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()
