"""docs/benchmarks.md as run_all writes it: the summary row, a result's own table, its hand-written notes."""
from __future__ import annotations

from benchmarks import run_all


def test_the_doc_keeps_each_results_notes_under_its_table(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "NOTES", tmp_path)
    (tmp_path / "cv_racing.md").write_text("Why 0.5 is hard here.\n\n- a bullet\n")
    (tmp_path / "data_scale.md").write_text("A section of notes alone.\n")
    result = {"what": "a race", "unit": "s", "figure": 50.0, "baseline": 100.0, "ratio": 0.5,
              "machine": {"cpu": "x86_64", "cores": 2}, "date": "2026-12-03 20:00:00", "table": ["| a |", "| --- |", "| 1 |"]}
    doc = run_all.markdown({"cv_racing": {"result": result}, "data_scale": {"result": {**result, "table": None}},
                            "roofline": {"status": "not run", "reason": "not selected (--only)"}})
    lines = doc.splitlines()
    assert "| cv_racing | a race | 50 s | 100 s | 0.500 | ratio ≤ 0.5; racing's choice within 1 SE of the full search's best | x86_64, 2 cores | 2026-12-03 20:00:00 |" in lines
    assert "| roofline | not run: not selected (--only) | | | | | | |" in lines
    section = lines[lines.index("## cv_racing"):]
    assert section[:9] == ["## cv_racing", "", "a race", "", "| a |", "| --- |", "| 1 |", "", "Why 0.5 is hard here."]
    assert section[9:11] == ["", "- a bullet"]
    assert lines[lines.index("## data_scale"):][:3] == ["## data_scale", "", "A section of notes alone."]
