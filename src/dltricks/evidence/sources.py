"""Where a tip's claim comes from: a document of the seed material and a line range in it.

The seed material is a folder of plain-text documents (``../shared/sources`` next to the repository; its
README says what each file is). A tip cites it with :class:`Cite` objects, made from the document
constants below, e.g. ``README.at(21, 23, "receptive fields of stacked 3x3")``:

* :data:`README`: the *Deep-Learning-Tips-and-Tricks* README, the clean Markdown copy;
* :data:`LECTURE`: the lecture *Attention & Neural Network Architectures* (with its detection appendix);
* :data:`BLOG`: the blog post on MambaOut (its two hypotheses);
* :data:`DILATED`: the repository dump whose first line holds the whole *Dilated Convolution* README
  (ASPP, DeepLabV3, output stride); a cite there is line 1 and names the inner passage in its topic.

A cite is checked when it is made, that is when the module declaring the tip is imported: the line
range must be a range (``1 <= first <= last``), and when the folder of documents is on this machine
(:func:`sources_dir`), the file must be in it and ``last`` must not pass its end. Without the folder (an
installed package) only the range is checked; ``tests/test_tip_declarations.py`` resolves every cite
where the folder exists.

Lines are counted as ``cat -n`` and editors count them: a line ends at ``\\n``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from dltricks.errors import CatalogError

__all__ = ["Cite", "Document", "README", "LECTURE", "BLOG", "DILATED", "DOCUMENTS", "sources_dir", "line_count"]

SOURCES_ENV = "DLTRICKS_SOURCES"


@functools.lru_cache(maxsize=None)
def _find_sources(env: str | None) -> Path | None:
    if env:
        return Path(env) if Path(env).is_dir() else None
    # ``shared/sources`` beside the checkout (../shared/sources) or inside it (a copy of the working tree).
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "sources"
        if candidate.is_dir():
            return candidate
    return None


def sources_dir() -> Path | None:
    """The folder of seed documents: ``$DLTRICKS_SOURCES``, else the first ``shared/sources`` found in a
    folder above this file (``None`` when there is none, e.g. in an installed package)."""
    return _find_sources(os.environ.get(SOURCES_ENV) or None)


@functools.lru_cache(maxsize=None)
def _count_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def line_count(file: str) -> int | None:
    """Number of lines of ``file`` in :func:`sources_dir` (``None`` without the folder or the file)."""
    folder = sources_dir()
    path = folder / file if folder is not None else None
    return _count_lines(path) if path is not None and path.is_file() else None


@dataclass(frozen=True)
class Cite:
    """Lines ``first..last`` of ``file`` (a file name in the sources folder); ``topic`` names the passage.

    Raises :class:`~dltricks.errors.CatalogError` on a range that is not one, and, when the sources folder is
    on this machine, on a file that is not in it or a range past its end.
    """

    file: str
    first: int
    last: int
    topic: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.first, int) and isinstance(self.last, int) and 1 <= self.first <= self.last):
            raise CatalogError(f"cite {self.file}:{self.first}-{self.last}: expected line numbers 1 <= first <= last")
        if "/" in self.file or "\\" in self.file or not self.file:
            raise CatalogError(f"cite {self.file!r}: expected a file name of the sources folder, not a path")
        folder = sources_dir()
        if folder is None:
            return
        lines = line_count(self.file)
        if lines is None:
            known = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
            raise CatalogError(f"cite {self}: no file {self.file!r} in {folder} (files: {known})")
        if self.last > lines:
            raise CatalogError(f"cite {self}: {self.file} has only {lines} lines")

    @property
    def lines(self) -> str:
        return f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def document(self) -> str:
        """The short name of the cited document ("README", "lecture", ...), or its file name."""
        known = DOCUMENTS.get(self.file)
        return known.name if known is not None else self.file

    def __str__(self) -> str:
        about = f"{self.document}: {self.topic}" if self.topic else self.document
        return f"{self.file}:{self.lines} ({about})"

    def text(self) -> str | None:
        """The cited lines as they stand in the document (``None`` without the sources folder)."""
        folder = sources_dir()
        if folder is None or not (folder / self.file).is_file():
            return None
        lines = (folder / self.file).read_text(encoding="utf-8", errors="replace").split("\n")
        return "\n".join(lines[self.first - 1:self.last])


@dataclass(frozen=True)
class Document:
    """One document of the seed material: its file name in the sources folder and a short name."""

    file: str
    name: str

    def at(self, first: int, last: int | None = None, topic: str = "") -> Cite:
        """Cite lines ``first..last`` (``last`` defaults to ``first``) of this document."""
        return Cite(self.file, first, first if last is None else last, topic)


README = Document("002_41e84abc9367f530.txt", "README")
LECTURE = Document("003_5c6ca2dbabe6feb5.txt", "lecture")
BLOG = Document("004_24c73d382e73650c.txt", "MambaOut blog")
DILATED = Document("000_298fe740ce8f2890.txt", "Dilated Convolution README")
DOCUMENTS = {d.file: d for d in (README, LECTURE, BLOG, DILATED)}
