"""The HTML report: rendered in headless Chromium (Debian's ``chromium``), the summary table, verdict badges
and every plot must be present and the plots must load."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dltricks.evidence import Exact, Tip
from dltricks.tips.catalog import get_catalog
from dltricks.tips.engine import TipResult, run_tips, select_tips
from dltricks.tips.report import render_html, summary_table, write_report

TIPS = ["conv.stacked-3x3", "conv.transposed-checkerboard", "optim.activations"]
# A tip without an experiment: it must be listed as "not yet tested", never faked.
PENDING = Tip(id="test.pending", title="pending", claim="something nobody has measured yet", source="test",
              section="Tests", rule=Exact(("never",)))
IDS = TIPS + [PENDING.id]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TipResult]]:
    out = tmp_path_factory.mktemp("report")
    tips = select_tips(get_catalog(), TIPS) + [PENDING]
    results = run_tips(tips, mode="quick", out=out, cache_dir=out / ".cache", progress=False)
    write_report(results, out, mode="quick", elapsed_s=1.0)
    return out, results


def test_report_files(report):
    out, results = report
    data = json.loads((out / "results.json").read_text())
    assert [t["id"] for t in data["tips"]] == IDS
    assert data["meta"]["mode"] == "quick" and data["meta"]["torch"]
    html = (out / "index.html").read_text()
    assert html.count('<tr class="row"') == len(IDS)
    for r in results:
        for plot in r.plots:
            assert (out / plot).is_file() and (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["tips"][-1]["verdict"] == "not yet tested" and not data["tips"][-1]["evidence"]


def test_report_files_are_public_and_hold_the_statistics(report):
    """Files 0644; every statistical part has per-seed values, n, the interval and the deciding test; the HTML
    shows per-seed points, the interval, n, the budget and what would change the verdict."""
    out, results = report
    for path in [out / "results.json", out / "index.html", *(out / p for r in results for p in r.plots)]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    data = json.loads((out / "results.json").read_text())
    assert "Student-t" in data["meta"]["intervals"]
    activations = next(t for t in data["tips"] if t["id"] == "optim.activations")
    assert activations["seeds"] == [0, 1, 2]
    for part in activations["stats"]:
        assert len(part["treatment_values"]) == len(part["control_values"]) == len(part["differences"]) == 3
        assert part["effect"]["n"] == 3 and part["effect"]["df"] == 2 and part["effect"]["lo"] < part["effect"]["hi"]
        assert part["kind"] == "effect" and part["bound"] == 1.0 and part["verdict"] and part["mde"] > 0
    html = (out / "index.html").read_text()
    section = html[html.index('id="optim.activations"'):]
    assert '<svg class="strip"' in section and "95% CI [" in section and "n=3, df=2" in section
    assert "minimum detectable effect" in section and "Budget:" in section


def test_html_escapes_user_text():
    r = TipResult(id="x.y", title="<b>t</b>", claim="a < b & c", source="s", section="S", verdict="confirmed",
                  reason="r", rule="rule", mode="quick")
    html = render_html([r], {"mode": "quick"})
    assert "a &lt; b &amp; c" in html and "<b>t</b>" not in html


def test_summary_table_has_a_row_per_tip(report):
    from rich.console import Console

    _, results = report
    console = Console(record=True, width=200)
    console.print(summary_table(results))
    text = console.export_text()
    for tip_id in IDS:
        assert tip_id in text


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; `make test` installs it when run as root)")
    out, results = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "index.html").resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert '<table id="summary">' in html
    rows = re.findall(r'<tr class="row" data-verdict="([^"]+)"', html)
    assert len(rows) == len(IDS) and "confirmed" in rows and "not yet tested" in rows
    images = re.findall(r"<img [^>]*>", html)
    expected = sum(len(r.plots) for r in results)
    assert expected >= 3 and len(images) == expected
    assert all('data-loaded="yes"' in img for img in images), images  # every plot decoded by the browser
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", url], capture_output=True,
                   timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
