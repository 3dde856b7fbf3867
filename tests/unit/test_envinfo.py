"""Environment capture: allow-list and secret redaction."""

import subprocess
import sys

from tbdprof.envinfo import REDACTED, capture, filtered_env


def test_only_allow_listed_variables_are_kept():
    env = {"OMP_NUM_THREADS": "4", "HOME": "/root", "PATH": "/bin", "NCCL_DEBUG": "INFO", "AWS_SECRET_ACCESS_KEY": "x"}
    assert filtered_env(env) == {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "4"}


def test_secret_looking_names_are_redacted_even_when_allowed():
    env = {"TBDPROF_API_TOKEN": "abc", "HOROVOD_SECRET_KEY": "s3cr3t", "SLURM_JOB_ID": "5"}
    out = filtered_env(env)
    assert out["TBDPROF_API_TOKEN"] == REDACTED
    assert out["HOROVOD_SECRET_KEY"] == REDACTED
    assert out["SLURM_JOB_ID"] == "5"


def test_capture_has_versions_threads_and_hardware(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    info = capture()
    assert info["python"].count(".") == 2
    assert info["cpu_logical"] >= 1
    assert info["env"]["OMP_NUM_THREADS"] == "3"
    assert "s3cr3t" not in str(capture({"x": 1}))


def test_capture_leaves_the_scripts_warnings_shown_once():
    # platform.platform() leaves a warnings.catch_warnings() block, which resets the registry of warnings
    # already shown: a script's warning printed before the recorder started would print again after it.
    code = ("import warnings\n"
            "from tbdprof import envinfo\n"
            "def warn(): warnings.warn('shown once')\n"
            "warn()\n"
            "envinfo.capture()  # as the recorder starts, at the first training event\n"
            "warn()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("UserWarning: shown once") == 1, proc.stderr
