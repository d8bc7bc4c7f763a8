"""``dltricks tips`` and ``dltricks verify`` end to end through the CLI."""

from __future__ import annotations

import json


from dltricks.cli import main


def test_tips_lists_the_catalog(capsys):
    assert main(["tips", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    status = {r["id"]: r["status"] for r in rows}
    assert status["conv.stacked-3x3"] == "implemented" and status["ssm.mamba-adaptive-depth"] == "doc-check"
    assert set(status.values()) == {"implemented", "doc-check", "not yet tested"}
    assert all(r["cite"] for r in rows)  # every tip names a document and lines
    assert main(["tips", "conv.*"]) == 0
    assert "conv.padding" in capsys.readouterr().out


def test_verify_quick_end_to_end_and_cached_rerun(tmp_path, capsys):
    out = tmp_path / "report"
    # its own cache: the session's shared cache may already hold these tips from other tests
    args = ["verify", "--quick", "--only", "conv.stacked-3x3,conv.padding", "--out", str(out), "--cache-dir",
            str(tmp_path / "cache")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "conv.stacked-3x3" in printed and "confirmed" in printed
    data = json.loads((out / "results.json").read_text())
    assert [t["verdict"] for t in data["tips"]] == ["confirmed", "confirmed"]
    assert not any(t["cached"] for t in data["tips"])
    assert (out / "index.html").is_file() and (out / data["tips"][0]["plots"][0]).is_file()
    assert main(args) == 0
    data = json.loads((out / "results.json").read_text())
    assert all(t["cached"] for t in data["tips"])


def test_verify_unknown_tip_is_one_clear_error(tmp_path, capsys):
    assert main(["verify", "--only", "conv.stacked3x3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown tip 'conv.stacked3x3'" in err and "conv.stacked-3x3" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_verify_rejects_zero_seeds(tmp_path, capsys):
    assert main(["verify", "--seeds", "0", "--only", "conv.padding", "--out", str(tmp_path / "r")]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_run_is_verify_quick(tmp_path, monkeypatch):
    """`dltricks run` (what `make run` calls) is `verify --quick` into the report folder, two tips at a time."""
    import dltricks.tips.verify as verify_module

    calls = []
    monkeypatch.setattr(verify_module, "verify", lambda **kw: calls.append(kw) or [])
    assert main(["run", "--report", str(tmp_path / "r")]) == 0
    assert calls == [{"mode": "quick", "out": tmp_path / "r", "workers": 2}]


def test_tips_markdown_lists_every_tip(capsys):
    from dltricks.tips.catalog import get_catalog

    assert main(["tips", "--markdown"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert len(lines) == len(get_catalog())
