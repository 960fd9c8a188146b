"""Write a small, real PDF (text pages in Helvetica) without a PDF library, for ingestion tests.

pypdf reads PDFs but does not lay out text; this writes the few objects a text PDF needs (catalog,
page tree, pages, one content stream per page, a font) and a correct cross-reference table.
"""

from __future__ import annotations

from pathlib import Path

LINE_HEIGHT = 16
TOP = 760
LEFT = 60


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    """One PDF page per list of lines."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    page_ids = [3 + 2 * i for i in range(n_pages)]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, lines in enumerate(pages):
        content_id = page_ids[i] + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        ops = [f"BT /F1 12 Tf {LEFT} {TOP} Td {LINE_HEIGHT} TL"]
        ops += [f"({_escape(line)}) Tj T*" for line in lines]
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")

    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


SAFETY_SHEET = [
    [
        "Cirrus 3 Safety Sheet",
        "",
        "Do not use the Cirrus 3 in bathrooms or in rooms where the humidity",
        "is above 85 percent. Keep the air inlets free. Children must not play with the purifier.",
    ],
    [
        "Technical data",
        "",
        "Power use: 38 W at full speed, 2 W in standby.",
        "Weight: 5.2 kg.",
        "Clean air delivery rate (CADR): 310 cubic metres per hour.",
    ],
]


def write_safety_sheet(directory: Path) -> Path:
    """The sample knowledge base's PDF (data/manual/ has the rest): two pages of facts."""
    return write_pdf(directory / "safety-sheet.pdf", SAFETY_SHEET)
