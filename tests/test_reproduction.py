"""Claims, verdicts and the generated docs/REPRODUCTION.md (xaiimg.studies.reproduction)."""
from __future__ import annotations

from pathlib import Path

import pytest

from xaiimg.stats import Estimate
from xaiimg.studies import reproduction as rp

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("estimate, direction, expected, word", [
    (Estimate(30, 0.2, 0.1, 0.3), "greater", rp.REPRODUCED, "above"),
    (Estimate(30, -0.2, -0.3, -0.1), "greater", rp.NOT_REPRODUCED, "contradicted"),
    (Estimate(30, 0.05, -0.1, 0.2), "greater", rp.NOT_REPRODUCED, "inconclusive"),
    (Estimate(30, -0.2, -0.3, -0.1), "less", rp.REPRODUCED, "below"),
    (Estimate(30, 0.2, 0.0, 0.3), "greater", rp.NOT_REPRODUCED, "inconclusive"),   # touching the null is not enough
    (Estimate(30, 0.6, 0.55, 0.7), "greater", rp.REPRODUCED, "above"),
])
def test_verdict_rule(estimate, direction, expected, word):
    outcome, note = rp.verdict(estimate, direction, null=0.5 if estimate.mean == 0.6 else 0.0)
    assert outcome == expected and word in note


def test_claims_round_trip_and_render(tmp_path):
    claims = [rp.measured_claim("t/1", "thesis", "Table 3-2", "A beats B", "0.1 higher", "AUC(A) - AUC(B)",
                                "lite0", "20 photos", Estimate(20, 0.1, 0.05, 0.15), "greater"),
              rp.untestable_claim("t/2", "thesis", "Table 3-3", "pointing on VOC07", "90%", "needs VOC07")]
    rp.write_claims(tmp_path / "claims" / "a.json", claims)
    assert rp.read_claims(rp.claim_files(tmp_path)) == claims
    text = rp.render_markdown(claims)
    assert "**reproduced**" in text and "**not testable offline**" in text
    assert "2 claims: 1 reproduced, 0 not reproduced, 1 not testable offline" in text
    out = rp.write_reproduction(tmp_path, tmp_path / "REPRODUCTION.md")
    assert out.read_text().count("| Table 3-") == 2
    assert rp.verdict_lines(claims, ["Table 3-2"]) == [
        "- Table 3-2: A beats B: REPRODUCED (AUC(A) - AUC(B): +0.100 [+0.050, +0.150], n = 20, lite0; 20 photos). "
        + claims[0].note]
    assert rp.verdict_lines(claims, ["Table 3-3"]) == [
        "- Table 3-3: pointing on VOC07: NOT TESTABLE OFFLINE. needs VOC07"]
    assert len(rp.verdict_lines(claims)) == 2 and rp.verdict_lines(claims, ["Fig."]) == []


@pytest.mark.parametrize("change, message", [
    ({"paper": "other"}, "unknown paper"), ({"verdict": "maybe"}, "unknown verdict"),
    ({"n": None, "mean": None, "ci_low": None, "ci_high": None}, "needs n"), ({"mean": 2.0}, "outside its interval")])
def test_malformed_claims_are_refused(change, message):
    record = dict(id="x", paper="thesis", where="w", statement="s", paper_value="p", measure="m", model="m",
                  data="d", verdict=rp.REPRODUCED, note="", n=3, mean=0.5, ci_low=0.1, ci_high=0.9)
    with pytest.raises(ValueError, match=message):
        rp.Claim(**{**record, **change})


def test_duplicate_ids_and_bad_files_are_named(tmp_path):
    claim = rp.untestable_claim("dup", "thesis", "w", "s", "p", "r")
    with pytest.raises(ValueError, match="duplicate"):
        rp.write_claims(tmp_path / "x.json", [claim, claim])
    bad = tmp_path / "claims" / "bad.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        rp.read_claims([bad])


def test_committed_reproduction_matches_results():
    """docs/REPRODUCTION.md is what `xaiimg reproduction` renders from the committed results/claims."""
    files = rp.claim_files(ROOT / "results")
    assert files, "results/claims holds no claims files"
    expected = rp.render_markdown(rp.read_claims(files), [f"results/claims/{file.name}" for file in files])
    assert (ROOT / "docs" / "REPRODUCTION.md").read_text() == expected
