"""The automatic recorder's process rule table, its hook guard, the sitecustomize
chaining, and the small pieces of `tbdprof profile` (exit codes, mpirun -x flags)."""

import os
import subprocess
import sys

import pytest

from tbdprof import autoprofile
from tbdprof.autoprofile import ENV_AUTO, ENV_RANK_PID, Facts, classify
from tbdprof.launch import profile

ON = {ENV_AUTO: "1"}


def role(argv=("train.py",), env=ON, pid=100, mp_child=False, joined=False) -> str:
    return classify(Facts(tuple(argv), env, pid, mp_child, joined)).role


@pytest.mark.parametrize("argv, env, pid, mp_child, joined, expected", [
    (("train.py",), {}, 100, False, False, "off"),
    (("train.py",), ON, 100, False, False, "rank"),
    (("train.py",), ON, 100, True, False, "worker"),  # DataLoader worker, forked
    (("-c", "from multiprocessing.spawn import spawn_main", "--multiprocessing-fork"), ON, 100, False, False, "worker"),
    (("/venv/bin/torchrun", "--nproc-per-node", "2", "train.py"), ON, 100, False, False, "launcher"),
    (("-m", "torch.distributed.run", "train.py"), ON, 100, False, False, "launcher"),
    (("/venv/lib/torch/distributed/run.py", "train.py"), ON, 100, False, False, "launcher"),
    (("/venv/bin/horovodrun", "-np", "2", "python", "train.py"), ON, 100, False, False, "launcher"),
    (("my_torchrun_notes.py",), ON, 100, False, False, "rank"),
    (("train.py",), {**ON, ENV_RANK_PID: "99"}, 100, False, False, "helper"),  # started by rank pid 99
    (("train.py",), {**ON, ENV_RANK_PID: "100"}, 100, False, False, "rank"),  # the rank itself (after exec)
    (("train.py",), ON, 100, True, True, "rank"),  # torch.multiprocessing.spawn child that joined a group
    (("train.py",), ON, 100, False, True, "rank"),  # a launcher's rank that joined a group
    (("train.py",), {}, 100, True, True, "off"),
    (("train.py",), {**ON, ENV_RANK_PID: "99"}, 100, True, True, "worker"),  # a recording rank's pool child
    (("train.py",), {**ON, ENV_RANK_PID: "99"}, 100, False, True, "rank"),  # Lightning's ddp launcher started it as a subprocess
])
def test_rule_table(argv, env, pid, mp_child, joined, expected):
    assert role(argv, env, pid, mp_child, joined) == expected


def test_rules_end_with_a_catch_all_rank():
    assert autoprofile.RULES[-1].role == "rank"
    # before the catch-all, only a process that joined a process group is a rank
    assert all(r.role != "rank" or "joined a process group" in r.why for r in autoprofile.RULES[:-1])


def test_a_failing_hook_turns_itself_off_and_never_raises():
    torch = pytest.importorskip("torch")
    rec = autoprofile.AutoRecorder()
    rec.install()
    try:
        def boom(*a):
            raise RuntimeError("inside tbdprof")

        rec._ready = boom
        model = torch.nn.Linear(2, 2)
        autoprofile.TRAINED.add(torch.optim.SGD(model.parameters(), lr=0.1))  # a trained model: the hook goes on to _ready
        out = model(torch.randn(3, 2))  # the global forward hook fails inside
        assert out.shape == (3, 2) and rec.off
        assert torch.nn.modules.module._global_forward_pre_hooks == {}
    finally:
        rec.remove()


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_sitecustomize_chains_to_the_one_it_shadows(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nprint('user sitecustomize ran', file=sys.stderr)\n")
    pythonpath = f"{profile.INJECT_DIR}{os.pathsep}{tmp_path}"
    proc = _python("import sitecustomize; print(sitecustomize.__file__)", {"PYTHONPATH": pythonpath, ENV_AUTO: "1"})
    assert proc.returncode == 0, proc.stderr
    assert "user sitecustomize ran" in proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "sitecustomize.py")


def test_sitecustomize_installs_the_hooks_when_torch_is_imported(tmp_path):
    pytest.importorskip("torch")
    env = {"PYTHONPATH": str(profile.INJECT_DIR), ENV_AUTO: "1", "TBDPROF_RUN_DIR": str(tmp_path / "run")}
    code = "import sys; from tbdprof import autoprofile; assert autoprofile._recorder is None; import torch; print(autoprofile._recorder is not None)"
    assert _python(code, env).stdout.strip() == "True"
    launcher = _python("import sys; sys.argv[0] = 'torchrun'; " + code, env)  # the rule table says launcher
    assert launcher.stdout.strip() == "False", launcher.stderr
    assert not (tmp_path / "run").exists()  # nothing recorded without a training event


def test_exit_status_like_a_shell():
    assert profile.exit_status(0) == 0 and profile.exit_status(3) == 3
    assert profile.exit_status(-15) == 143


def test_resolve(tmp_path):
    env = {"PATH": os.environ.get("PATH", "")}
    assert profile.resolve(["no-such-command-tbdprof"], env) == (None, 127)
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    assert profile.resolve([str(script)], env) == (None, 126)
    assert profile.resolve([sys.executable], env)[1] == 0


def test_open_mpi_gets_env_forwarding_flags(monkeypatch):
    monkeypatch.setattr(profile, "_is_open_mpi", lambda exe: True)
    cmd = profile.forward_env(["mpirun", "-np", "2", "python", "t.py"], "/x/mpirun")
    assert cmd[0] == "mpirun" and cmd[-4:] == ["-np", "2", "python", "t.py"]
    assert set(cmd[2:-4:2]) == set(profile.FORWARDED_ENV) and set(cmd[1:-4:2]) == {"-x"}
    assert profile.forward_env(["torchrun", "t.py"], "/x/torchrun") == ["torchrun", "t.py"]
    monkeypatch.setattr(profile, "_is_open_mpi", lambda exe: False)  # MPICH forwards the environment itself
    assert profile.forward_env(["mpiexec", "-n", "2", "a.out"], "/x/mpiexec") == ["mpiexec", "-n", "2", "a.out"]


def test_child_env_prepends_the_hook_folder(tmp_path):
    env = profile.child_env({"PYTHONPATH": "/mine", ENV_RANK_PID: "7"}, tmp_path / "r", 20.0, 2.0)
    assert env["PYTHONPATH"] == f"{profile.INJECT_DIR}{os.pathsep}/mine"
    assert env[ENV_AUTO] == "1" and env["TBDPROF_RUN_DIR"] == str(tmp_path / "r") and ENV_RANK_PID not in env
