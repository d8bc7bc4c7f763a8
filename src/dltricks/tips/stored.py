"""The stored evidence base: full-mode results kept in the repository, with their provenance.

A quick run (``make run``) is three seeds of tiny models: it may only say "consistent with". The full
verdicts (>= 5 seeds, budgets where the baseline converges, Holm's correction) cost minutes to an hour per
tip, so they are run once, by a maintainer, with ``dltricks verify --full --store`` and kept as one JSON file
per tip under ``dltricks/tips/evidence_base/`` (package data, so an installed dltricks shows them too)::

    {"format": 1,
     "provenance": {"commit": ..., "dirty": false, "date": ..., "machine": ..., "torch": ..., "dltricks": ...,
                    "seeds": [0, 1, 2, 3, 4], "wall_s": ..., "cpu_s": ..., "command": ..., "workers": 1,
                    "code": <sha256 of the tip's code files>, "config": <sha256 of settings, seeds and rule>},
     "result": <the tip's row of results.json: per-seed values of every arm, intervals, the deciding rule>}

``dltricks verify`` shows the stored full verdict beside the one it just measured and flags a
disagreement (:func:`disagreement`); a stored result whose tip's full settings, seeds or rule have changed
since is shown as *stale*, and one whose code files (trainer and layers included) changed is marked so.
``python -m dltricks.tips.stored`` prints the Markdown table that docs/evidence.md carries (a test checks
the two are the same), so the table is generated, never typed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dltricks.errors import ConfigError
from dltricks.tips.engine import TipResult
from dltricks.utils.io import atomic_write_json

__all__ = ["FORMAT", "default_dir", "StoredEvidence", "store_results", "load_stored", "disagreement",
           "markdown_table", "NOT_STORED_REASONS"]

FORMAT = 1
PUBLIC = 0o644
# Verdicts worth keeping: a run that failed, was skipped or has no experiment says nothing about the claim.
KEPT = ("confirmed", "refuted", "inconclusive", "invalid setup", "documentation check")
# What a quick verdict points to, and the full verdicts that contradict it.
_CONTRADICTS = {"consistent with": ("refuted",), "not consistent with": ("confirmed",),
                "confirmed": ("refuted",), "refuted": ("confirmed",)}
# Tips deliberately left out of the base, with the reason the docs table states.
NOT_STORED_REASONS: dict[str, str] = {}


def default_dir() -> Path:
    """``dltricks/tips/evidence_base/`` of this installation (in a source checkout: ``src/dltricks/...``)."""
    return Path(__file__).resolve().parent / "evidence_base"


@dataclass
class StoredEvidence:
    """One stored full-mode result with its provenance. ``stale``: why it no longer answers the tip's full
    setting (empty when it does); ``code_changed``: a code file the tip exercises changed since it was run."""

    result: TipResult
    provenance: dict[str, Any]
    stale: str = ""
    code_changed: bool = False

    @property
    def verdict(self) -> str:
        return self.result.verdict

    def summary(self) -> dict[str, Any]:
        """What ``results.json`` of a later run carries about this stored result."""
        p = self.provenance
        return {"verdict": self.verdict, "seeds": len(self.result.seeds), "date": p.get("date"),
                "commit": p.get("commit"), "machine": p.get("machine"), "wall_s": p.get("wall_s"),
                "stale": self.stale, "code_changed": self.code_changed}


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def config_digest(*, settings: dict[str, Any], seeds: Sequence[int], rule: str) -> str:
    """sha256 of what decides a full run besides the code: its settings, seeds and the verdict rule."""
    blob = json.dumps({"settings": settings, "seeds": list(seeds), "rule": rule}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def store_results(results: Sequence[TipResult], *, dest: Path | None = None, mode: str, command: str = "",
                  workers: int = 1) -> list[Path]:
    """Write one ``<tip id>.json`` per kept result of a full run into ``dest`` (default :func:`default_dir`).

    Only full mode is stored (a quick verdict is not evidence enough to keep); results that are errors,
    skipped or not yet tested are left out, and an earlier stored result of such a tip is kept. Each file is
    written atomically with mode 0644. Returns the files written.
    """
    from dltricks.tips.cache import code_fingerprint
    from dltricks.tips.catalog import get_catalog
    from dltricks.tips.report import machine_info

    if mode != "full":
        raise ConfigError("--store: only full-mode results are stored in the evidence base (add --full)")
    dest = Path(dest) if dest is not None else default_dir()
    dest.mkdir(parents=True, exist_ok=True)
    tips = {t.id: t for t in get_catalog()}
    info = machine_info()
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    written = []
    for r in results:
        if r.verdict not in KEPT or r.id not in tips:
            continue
        tip = tips[r.id]
        provenance = {"commit": commit or "unknown", "dirty": dirty,
                      "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "machine": info["machine"], "torch": info["torch"], "python": info["python"],
                      "dltricks": info["dltricks"], "cuda": info["cuda"], "seeds": list(r.seeds),
                      "wall_s": r.elapsed_s, "cpu_s": r.cpu_s, "command": command, "workers": workers,
                      "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
                      "code": code_fingerprint(tip),
                      "config": config_digest(settings=r.settings, seeds=r.seeds, rule=repr(tip.rule))}
        data = {"format": FORMAT, "provenance": provenance, "result": {**r.to_dict(), "cached": False}}
        path = dest / f"{r.id}.json"
        atomic_write_json(path, data, mode=PUBLIC)
        written.append(path)
    return written


def _staleness(result: TipResult, provenance: dict[str, Any], tips: dict[str, Any]) -> tuple[str, bool]:
    """``(stale, code_changed)``: why the stored result no longer answers the tip's full setting (the tip is
    gone, or its settings, seeds or rule changed: empty when it still does), and whether any of the tip's code
    files (the trainer and layers it exercises included) changed since, which may or may not matter."""
    from dltricks.tips.cache import code_fingerprint
    from dltricks.tips.engine import seed_list

    tip = tips.get(result.id)
    if tip is None:
        return "no such tip in the catalog any more", False
    code_changed = provenance.get("code") != code_fingerprint(tip)
    full = tip.settings("full")
    seeds = seed_list(len(result.seeds), start=min(result.seeds) if result.seeds else 0)
    if full is not None and provenance.get("config") != config_digest(settings=full, seeds=seeds,
                                                                       rule=repr(tip.rule)):
        return (f"its full settings or rule changed since commit {str(provenance.get('commit', '?'))[:10]}",
                code_changed)
    return "", code_changed


def load_stored(src: Path | None = None, *, check_staleness: bool = True) -> dict[str, StoredEvidence]:
    """The stored results by tip id. A file that is not a stored result of this format is an error naming
    the file (the base is part of the repository: a broken file is a bug to fix, not to skip)."""
    from dltricks.tips.catalog import get_catalog

    src = Path(src) if src is not None else default_dir()
    if not src.is_dir():
        return {}
    tips = {t.id: t for t in get_catalog()} if check_staleness else {}
    out: dict[str, StoredEvidence] = {}
    for path in sorted(src.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"expected a JSON object with \"format\": {FORMAT}")
            if not isinstance(data.get("provenance"), dict):
                raise ValueError("\"provenance\" must be an object")
            result = TipResult.checked(data["result"])
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as err:
            raise ConfigError(f"stored evidence {path}: {err}") from None
        if result.id != path.stem:
            raise ConfigError(f"stored evidence {path}: holds tip {result.id!r}, expected {path.stem!r}")
        stale, code_changed = _staleness(result, data["provenance"], tips) if check_staleness else ("", False)
        out[result.id] = StoredEvidence(result, data["provenance"], stale, code_changed)
    return out


def disagreement(quick: str, full: str) -> bool:
    """True when a run's verdict points one way and the stored full verdict the other (an inconclusive or
    invalid side is no disagreement: it only says less)."""
    return full in _CONTRADICTS.get(quick, ())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(stored: dict[str, StoredEvidence] | None = None) -> str:
    """The Markdown table of the stored evidence base, in catalog order, that docs/evidence.md carries."""
    from dltricks.tips.catalog import get_catalog
    from dltricks.tips.report import key_numbers

    stored = load_stored(check_staleness=False) if stored is None else stored
    lines = ["| tip | full verdict | key numbers (effect, 95 % CI, n seeds) | budget | wall | commit, date |",
             "| --- | --- | --- | --- | --- | --- |"]
    for tip in get_catalog():
        s = stored.get(tip.id)
        if s is None:
            continue
        p = s.provenance
        budget = (s.result.evidence or {}).get("budget") or {}
        budget_text = ", ".join(f"{k} {v}" for k, v in budget.items()) if isinstance(budget, dict) else ""
        verdict = s.verdict + (" (stale)" if s.stale else "")
        numbers = _cell(key_numbers(s.result, plain=True))
        lines.append(f"| `{tip.id}` | {verdict} | {numbers} | {_cell(budget_text)} "
                     f"| {float(p.get('wall_s') or 0):.0f} s | {str(p.get('commit', ''))[:8]}, {p.get('date', '')} |")
    return "\n".join(lines) + "\n"


START, END = "<!-- stored-evidence-table:start -->\n", "<!-- stored-evidence-table:end -->"


def write_docs_table(doc: Path) -> None:
    """Replace the table between the markers of ``doc`` (docs/evidence.md) by :func:`markdown_table`."""
    from dltricks.utils.io import atomic_write_text

    text = Path(doc).read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ConfigError(f"{doc}: no {START.strip()} ... {END} markers to put the table between")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(Path(doc), head + START + markdown_table() + END + tail, mode=PUBLIC)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dltricks.tips.stored [--write DOC]``: print the Markdown table of the stored evidence base,
    or write it between the markers of DOC (``make evidence-table`` does this for docs/evidence.md)."""
    argv = list(argv or [])
    if argv[:1] == ["--write"] and len(argv) == 2:
        write_docs_table(Path(argv[1]))
        return 0
    if argv:
        sys.stderr.write("usage: python -m dltricks.tips.stored [--write DOC]\n")
        return 2
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main(sys.argv[1:]))
