"""Launchers without running anything: dry-run command lines, hostfiles, SLURM scripts, sweep plans."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tbdprof.cli import main
from tbdprof.launch import launchers
from tbdprof.launch.hosts import Host, HostfileError, parse_hosts, place, read_hostfile
from tbdprof.launch.launchers import Spec
from tbdprof.launch.local import LaunchError, exit_code
from tbdprof.launch.sweep import plan_sweep

COMMAND = ["/venv/bin/python", "-m", "tbdprof.workloads.train", "resnet50", "--steps", "5"]


def spec(hosts: str, **kw) -> Spec:
    return Spec(parse_hosts(hosts), COMMAND, Path("/runs/r1"), 29500, {"OMP_NUM_THREADS": "1"}, **kw)


def lines(name: str, s: Spec, **options) -> list[list[str]]:
    return [shlex.split(line) for line in launchers.get(name, **options).plan(s).lines()]


def test_torchrun_one_agent_per_host_over_ssh():
    node0, node1 = lines("torchrun", spec("node0:2,node1:2"))
    assert node0[:4] == ["ssh", "-tt", "-o", "BatchMode=yes"] and node0[4] == "node0" and node1[4] == "node1"
    remote = shlex.split(node1[5].split(" && exec ", 1)[1])
    i = remote.index("--nnodes")
    assert remote[i : i + 4] == ["--nnodes", "2", "--nproc-per-node", "2"]
    assert remote[remote.index("--rdzv-endpoint") + 1] == "node0:29500"
    assert remote[remote.index("--rdzv-backend") + 1] == "c10d"
    assert remote[-5:] == ["-m", "tbdprof.workloads.train", "resnet50", "--steps", "5"]
    assert "TBDPROF_RUN_DIR=/runs/r1" in remote and "TBDPROF_LAUNCHER=torchrun" in remote


def test_torchrun_local_needs_no_ssh():
    (line,) = lines("torchrun", spec("localhost:2"))
    assert line[0] == "TBDPROF_RUN_DIR=/runs/r1" and "ssh" not in line
    assert line[line.index("--rdzv-endpoint") + 1] == "localhost:29500"


def test_torchrun_refuses_uneven_hosts():
    with pytest.raises(LaunchError, match="same number of ranks on every host"):
        lines("torchrun", spec("node0:2,node1:1"))


def test_mpirun_hosts_and_env():
    (line,) = lines("mpirun", spec("node0:2,node1:2", iface="eth0"))
    assert line[line.index("-np") + 1] == "4" and line[line.index("-H") + 1] == "node0:2,node1:2"
    exported = [line[i + 1] for i, a in enumerate(line) if a == "-x"]
    assert "MASTER_ADDR=node0" in exported and "MASTER_PORT=29500" in exported and "GLOO_SOCKET_IFNAME=eth0" in exported
    assert line[line.index("btl_tcp_if_include") + 1] == "eth0"
    assert line[-len(COMMAND):] == COMMAND


def test_mpirun_local_master_is_loopback():
    (line,) = lines("mpirun", spec("localhost:2"))
    assert "MASTER_ADDR=127.0.0.1" in line


def test_mpirun_hostfile_written_into_run():
    plan = launchers.get("mpirun", hostfile=True).plan(spec("node0:2,node1:3"))
    assert plan.files == {Path("/runs/r1/hostfile"): "node0 slots=2\nnode1 slots=3\n"}
    assert "--hostfile" in plan.procs[0].argv


@pytest.mark.parametrize("mode", ["gloo", "mpi"])
def test_horovodrun(mode):
    (line,) = lines("horovodrun", spec("a:2,b:2", iface="eth0"), horovod_mode=mode)
    i = next(i for i, a in enumerate(line) if a.split("/")[-1] == "horovodrun")
    assert line[i + 1 : i + 6] == ["-np", "4", "-H", "a:2,b:2", f"--{mode}"]
    assert line[line.index("--network-interface") + 1] == "eth0"
    assert "MASTER_ADDR=a" in line[:i]


def test_local_launcher_sets_rank_variables():
    plan = launchers.get("local").plan(spec("localhost:2"))
    assert [p.env["RANK"] for p in plan.procs] == ["0", "1"] and plan.procs[0].argv == COMMAND


def test_slurm_srun_script():
    s = spec("slurm-node-0:4,slurm-node-1:4")
    plan = launchers.get("slurm").plan(s)
    (script,) = plan.files.values()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "--nodelist" not in script and "@" not in script.replace("%j", "")
    assert "export TBDPROF_RUN_DIR=/runs/r1" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert shlex.split(srun)[:4] == ["srun", "--ntasks=8", "--ntasks-per-node=4", "--kill-on-bad-exit=1"]
    assert plan.procs[0].argv[-1] == "/runs/r1/job.sbatch" and not plan.waits


def test_slurm_wait_blocks_on_the_job():
    plan = launchers.get("slurm", wait=True).plan(spec("n1:1,n2:1"))
    assert plan.procs[0].argv[1:] == ["--wait", "/runs/r1/job.sbatch"] and plan.waits


def test_slurm_torchrun_script_keeps_shell_variables():
    (script,) = launchers.get("slurm", slurm_mode="torchrun").plan(spec("n1:2,n2:2")).files.values()
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --nodelist=n1,n2" in script
    assert '--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"' in script and '"$SLURM_JOB_ID"' in script


def test_hostfile_formats(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# cluster\nnode0 slots=2\nnode1:3   # fast one\n\nnode2\n")
    assert read_hostfile(f) == [Host("node0", 2), Host("node1", 3), Host("node2", 1)]


@pytest.mark.parametrize("bad", ["node1 slots=x", "node1:0", "no de", "node1 cpus=2"])
def test_hostfile_bad_line_named(tmp_path, bad):
    f = tmp_path / "hosts"
    f.write_text(f"node0 slots=2\n{bad}\n")
    with pytest.raises(HostfileError, match=rf"hostfile {f} line 2"):
        read_hostfile(f)


def test_hosts_duplicate_and_slots():
    with pytest.raises(HostfileError, match="listed twice"):
        parse_hosts("a:1,a:2")
    assert place(parse_hosts("a:2,b:2"), 3) == [Host("a", 2), Host("b", 1)]
    assert place(parse_hosts("a:4,b:4"), None, 2) == [Host("a", 2), Host("b", 2)]
    with pytest.raises(LaunchError, match="5 ranks requested but the hosts offer 4 slot"):
        place(parse_hosts("a:2,b:2"), 5)


def test_sweep_strong_and_weak():
    strong = plan_sweep([1, 2, 4], [32], repeat=2, scaling="strong")
    assert [(c.nproc, c.batch_size, c.global_batch_size, c.repeat) for c in strong[::2]] == [(1, 32, 32, 0), (2, 16, 32, 0), (4, 8, 32, 0)]
    assert len(strong) == 6 and strong[1].repeat == 1
    weak = plan_sweep([1, 2], [16, 32], scaling="weak")
    assert [(c.nproc, c.batch_size, c.global_batch_size) for c in weak] == [(1, 16, 16), (1, 32, 32), (2, 16, 32), (2, 32, 64)]
    assert len({c.run_id for c in strong}) == len(strong)
    with pytest.raises(LaunchError, match="global batch 30 does not divide over 4 ranks"):
        plan_sweep([1, 4], [30], scaling="strong")


def test_cli_dry_run_prints_commands(tmp_path, capsys):
    code = main(["launch", "resnet50", "--launcher", "mpirun", "--hosts", "localhost:2", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "mpirun" in out and "-np 2" in out and not any(tmp_path.iterdir())


def test_cli_sweep_dry_run(tmp_path, capsys):
    code = main(["sweep", "resnet50", "--nproc", "1,2", "--batch-size", "16", "--scaling", "strong", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "n2-gb16-r0" in out and "--batch-size 8" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hosts", "localhost:2", "--nproc", "3"], "3 ranks requested but the hosts offer 2 slot"),
        (["--launcher", "slurm", "--submit"], "launcher slurm: sbatch is not installed"),
        (["--hosts", "a:1", "--hostfile", "x"], "not both"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(launchers, "find_tool", lambda name: None)
    code = main(["launch", "resnet50", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_bad_hostfile_line(tmp_path, capsys):
    f = tmp_path / "hosts"
    f.write_text("node0 slots=2\nnode1 slots=two\n")
    assert main(["launch", "resnet50", "--hostfile", str(f), "--dry-run"]) == 2
    assert f"hostfile {f} line 2" in capsys.readouterr().err


@pytest.mark.parametrize("codes, first, want", [
    ([0, 0], None, 0),
    ([2, 2], 1, 2),  # bad input stays bad input
    ([-15, -9], 1, 137),  # rank 1 died first (SIGKILL); rank 0 was stopped after it (SIGTERM)
    ([-15, -9], None, 143),  # nobody seen first: rank order
    ([0, 3], 1, 3),
])
def test_job_exit_code_is_that_of_the_first_failure(codes, first, want):
    assert exit_code(codes, first) == want


def test_a_launcher_takes_only_its_own_options():
    # the CLI passes every launcher's options; each keeps its own, and Spec carries none of them
    assert type(launchers.get("torchrun", horovod_mode="mpi", wait=True)) is launchers.Torchrun
    assert launchers.get("horovodrun", horovod_mode="mpi", wait=True).horovod_mode == "mpi"
    assert not hasattr(spec("localhost:1"), "slurm_mode")
