"""Loading and chunking: what ingestion indexes, and what it refuses, before any vector is computed."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from llm_serve.rag.chunking import split_text
from llm_serve.rag.loaders import NO_PAGE, LoadError, collect_files, html_to_text, load
from tests.sample_pdf import write_pdf

ROOT = Path(__file__).resolve().parents[2]


def words(text: str) -> int:
    return len(text.split())


def test_chunks_respect_size_and_overlap() -> None:
    text = "\n\n".join(f"Paragraph {p}. " + " ".join(f"w{p}_{i}" for i in range(30)) for p in range(10))
    chunks = split_text(text, words, size=40, overlap=8)
    assert all(words(c) <= 40 for c in chunks)
    assert len(chunks) > 8
    for a, b in itertools.pairwise(chunks):
        assert set(a.split()[-8:]) & set(b.split()[:16]), "neighbours share some text"
    every_word = {w for c in chunks for w in c.split()}
    assert every_word == set(text.split()), "nothing is lost"


def test_chunks_prefer_paragraph_boundaries() -> None:
    text = "alpha beta gamma.\n\ndelta epsilon zeta.\n\neta theta iota."
    assert split_text(text, words, size=6, overlap=0) == ["alpha beta gamma.\n\ndelta epsilon zeta.", "eta theta iota."]


def test_a_word_longer_than_a_chunk_is_cut() -> None:
    chunks = split_text("x" * 50, len, size=20, overlap=5)
    assert all(len(c) <= 20 for c in chunks) and "".join(chunks).count("x") >= 50


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        split_text("text", words, size=10, overlap=10)


def test_html_keeps_visible_text_only() -> None:
    text = html_to_text(
        "<html><head><title>T</title><style>x{}</style><script>var a;</script></head>"
        "<body><nav>Home</nav><p>First &amp; one.</p><p>Second<br>line</p></body></html>"
    )
    assert text.splitlines()[0] == "T"
    assert "First & one." in text and "Second" in text and "var a" not in text and "x{}" not in text


def test_sample_manual_loads(tmp_path: Path) -> None:
    files, skipped = collect_files([ROOT / "data" / "manual"])
    assert {f.suffix for f in files} == {".md", ".html"} and not skipped
    support = load(ROOT / "data" / "manual" / "support.html")
    assert "Saturdays" in support.text and "analytics" not in support.text
    assert support.pages[0][0] == NO_PAGE


def test_pdf_pages_are_numbered(tmp_path: Path) -> None:
    doc = load(write_pdf(tmp_path / "a.pdf", [["first page"], [], ["third page"]]))
    assert [n for n, _ in doc.pages] == [1, 3], "an empty page is dropped, numbering kept"
    assert doc.pages[1][1] == "third page"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("blob.txt", b"abc\x00def", "binary"),
        ("latin.md", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("blank.md", b"  \n\n ", "empty"),
        ("broken.pdf", b"%PDF-1.4 garbage", "unreadable PDF"),
    ],
)
def test_unusable_files_say_why(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoadError, match=reason):
        load(path)


def test_collect_skips_unsupported_hidden_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "b.exe").write_bytes(b"MZ")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.md").write_text("c")
    files, skipped = collect_files([tmp_path, tmp_path / "missing.md"])
    assert [f.name for f in files] == ["a.md"]
    reasons = dict(skipped)
    assert any("unsupported file type '.exe'" in r for r in reasons.values())
    assert any("no such file" in r for r in reasons.values())
