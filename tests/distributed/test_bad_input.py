"""Bad input: one clear line on stderr, exit code 2, no traceback."""

import pytest

from clirun import run_cli


def _assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["run", "nosuchmodel"], "unknown workload 'nosuchmodel'"),
    (["run", "resnet50", "--preset", "giant"], "no preset 'giant'"),
    (["run", "resnet50", "--nproc", "0"], "--nproc must be at least 1"),
    (["run", "resnet50", "--steps", "0"], "--steps must be positive"),
    (["report", "/nonexistent/run"], "no such folder"),
])
def test_bad_arguments(args, needle):
    _assert_one_line_error(run_cli(*args, check=False), needle)


def test_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _assert_one_line_error(run_cli("run", "resnet50", "--out", f, check=False), "not a folder")


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    _assert_one_line_error(run_cli("report", tmp_path, check=False), "not a tbdprof run")


def test_data_folder_in_the_wrong_format(tmp_path, data_cache):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "meta.json").write_text("{not json")
    proc = run_cli("run", "resnet50", "--data", bad, "--out", tmp_path / "runs", check=False)
    assert proc.returncode == 2
    assert "meta.json" in proc.stderr and "Traceback" not in proc.stderr


def test_batch_size_one_with_batchnorm_is_refused_before_launch(tmp_path):
    _assert_one_line_error(run_cli("run", "resnet50", "--batch-size", 1, "--out", tmp_path, check=False),
                           "BatchNorm layers need more than one sample")
