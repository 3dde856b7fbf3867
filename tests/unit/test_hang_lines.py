"""The terminal's hang lines stay a few at a thousand ranks: one per culprit, one per group of the others."""

import io

from tbdprof.analysis.hangs import print_hangs
from tbdprof.analysis.terminal import console


def _lines(per_rank: dict) -> list[str]:
    out = io.StringIO()
    print_hangs(console(out, width=200), {"title": "rank 512 hung", "severity": "critical", "per_rank": per_rank})
    return out.getvalue().splitlines()


def test_a_thousand_ranks_print_the_culprit_and_one_line_per_group():
    per_rank = {str(r): {"state": "waiting", "step": 500, "label": "in allreduce of 53 tensors"} for r in range(1024)}
    per_rank["512"] = {"state": "hung", "step": 500, "label": "in __getitem__", "culprit": True, "no_progress_since_s": 61.0,
                       "no_progress_for_s": 30.0}
    per_rank["7"] = {"state": "dead", "step": 499, "label": ""}
    lines = _lines(per_rank)
    assert lines[0] == "HANG: rank 512 hung"
    assert lines[1].startswith("  rank 512: hung (culprit) at step 500, in __getitem__; no progress since 61.0 s")
    assert lines[2] == "  ranks 0-6, 8-511, 513-1023: waiting at step 500, in allreduce of 53 tensors"
    assert lines[3] == "  rank 7: dead at step 499" and len(lines) == 4


def test_a_few_ranks_print_one_line_each():
    per_rank = {str(r): {"state": "waiting", "step": 3, "label": "in allreduce"} for r in range(4)}
    assert len(_lines(per_rank)) == 5
