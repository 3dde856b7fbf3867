"""Exposed vs overlapped communication on hand-made spans with known answers."""

from storebuilder import MS, steps, write_rank, write_run

from tbdprof import schema
from tbdprof.analysis.breakdown import comm_overlap, phase_breakdown
from tbdprof.analysis.load import open_run

T0 = 10**18


def comm(step, a_ms, b_ms, nbytes=1000):
    return (step, "allreduce", schema.KIND_COMM, T0 + a_ms * MS, T0 + b_ms * MS, nbytes, None)


def test_exposed_and_overlapped_known_answer(tmp_path):
    # one 100 ms step: forward 0-40, backward 40-80, optimizer 85-95, data wait 95-100
    spans = steps(1, 100, phases={"forward": (0, 40), "backward": (40, 80), "optimizer": (85, 95), "data_wait": (95, 100)})
    # comm union = [50,70] + [75,90] + [92,100] = 43 ms (the 60-65 span lies inside another and must not count twice)
    spans += [comm(0, 50, 70), comm(0, 60, 65), comm(0, 75, 90), comm(0, 92, 100)]
    write_run(tmp_path, 1)
    write_rank(tmp_path, spans=spans)
    run = open_run(tmp_path)
    ov = comm_overlap(run)[0]
    assert ov["total"] == 43 * MS
    assert ov["overlapped"] == 25 * MS  # 50-70 and 75-80 inside backward
    assert ov["hidden"] == 33 * MS  # + 85-90 and 92-95 inside optimizer
    assert ov["exposed"] == 10 * MS  # 80-85 (no phase) and 95-100 (data wait is not compute)
    assert ov["outside_phases"] == 5 * MS  # only 80-85 is outside every phase

    b = phase_breakdown(run)["per_rank"]["0"]
    assert abs(b["comm_s_per_step"]["exposed"] - 0.010) < 1e-9
    assert abs(b["comm_fraction"]["overlapped"] - 0.25) < 1e-9
    stack = b["stack_s_per_step"]
    assert abs(stack["comm_exposed"] - 0.005) < 1e-9
    assert abs(sum(stack.values()) - b["step_s"]) < 1e-9  # the stack adds up to the step
    assert abs(b["phase_fraction"]["other"] - 0.05) < 1e-9


def test_warmup_comm_is_left_out_and_no_comm_is_zero(tmp_path):
    spans = steps(2, 100, phases={"backward": (40, 80)}) + [comm(0, 50, 90)]
    write_run(tmp_path, 1)
    write_rank(tmp_path, spans=spans, warmup_steps=1)
    b = phase_breakdown(open_run(tmp_path))["per_rank"]["0"]
    assert b["comm_s_per_step"] == {"total": 0.0, "overlapped": 0.0, "hidden": 0.0, "exposed": 0.0}
    assert b["steps"] == 1
