#!/usr/bin/env bash
# tbdprof testbed: N emulated hosts on one machine, for real multi-node launches.
#
#   testbed.sh up N [--bandwidth RATE] [--delay TIME] [--host-env HOST:VAR=VALUE]... [--name NAME] [--state DIR]
#   testbed.sh shape [--bandwidth RATE|none] [--delay TIME] [--state DIR]
#   testbed.sh exec [--state DIR] HOST COMMAND...   run COMMAND on HOST (its network, hostname, /etc/hosts)
#   testbed.sh slurm [--state DIR]      start SLURM on the hosts; prints SLURM_CONF=... for its clients
#   testbed.sh down [--state DIR] [--name NAME]
#   testbed.sh deps                     install what the testbed needs (apt-get)
#
# Each host nodeI is a network namespace with an eth0 (198.18.0.(I+1)/24, a veth
# on a bridge that has no address: the root namespace cannot reach the hosts and
# no traffic leaves them) and an sshd started under its own UTS and mount
# namespaces, with hostname nodeI and a bind-mounted /etc/hosts naming every
# host. Inside the hosts, /etc/ssh/ssh_config is a generated file that logs in
# as root with a throwaway key, so `ssh node1` works there as on a cluster.
# Launches start on node0 (`testbed.sh exec node0 ...`). Needs root.
#
# Several testbeds can be up at once, each with its own --state folder and
# --name (the prefix of its namespace, veth and bridge names; default tbdp):
# their hosts are in separate namespaces on separate bridges, so they may
# reuse host names and addresses. The name is kept in the state folder.
set -euo pipefail

STATE=${TBDPROF_TESTBED:-/tmp/tbdprof-testbed}
PREFIX=tbdp          # namespace, veth and bridge names start with this (--name)
SUBNET=198.18.0      # 198.18.0.0/15 is reserved for network benchmarks (RFC 2544)

die() { echo "testbed: $*" >&2; exit 2; }

need_tools() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, veth, sshd)"
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v tc >/dev/null || missing+=(iproute2)
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v ssh >/dev/null || missing+=(openssh-client)
    command -v nsenter >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "testbed: installing ${missing[*]}" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >&2 \
            || die "could not install ${missing[*]} with apt-get"
    fi
}

set_name() {  # interface names have at most 15 characters: NAME-v199, NAME-br0
    [[ "$1" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--name must be a lowercase letter and up to 7 more letters or digits (got '$1')"
    PREFIX=$1
}

load_state() {  # the testbed's name, from its state folder
    [ ! -f "$STATE/name" ] || PREFIX=$(cat "$STATE/name")
}

host_pid() {  # the sshd pid of host $1: entering its namespaces is entering the host
    local f="$STATE/$1.pid"
    [ -f "$f" ] || die "no host $1 (is the testbed up? state: $STATE)"
    cat "$f"
}

apply_shaping() {  # host, bandwidth ("" or none = unshaped), delay
    local ns="$PREFIX-$1" rate=$2 delay=$3
    ip netns exec "$ns" tc qdisc del dev eth0 root 2>/dev/null || true
    local parent=root
    if [ -n "$delay" ]; then
        ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: netem delay "$delay" 2>/dev/null \
            || die "--delay needs the netem qdisc, which this kernel does not provide (sch_netem); use --bandwidth only"
        parent="parent 1:"
    fi
    if [ -n "$rate" ] && [ "$rate" != none ]; then
        # burst: at least one rate/HZ worth and a few full frames; latency bounds the queue
        ip netns exec "$ns" tc qdisc add dev eth0 $parent handle 2: tbf rate "$rate" burst 32kb latency 500ms \
            || die "tc could not shape $1 to $rate"
    fi
}

cmd_up() {
    local n="" rate="" delay="" host_env=()
    while [ $# -gt 0 ]; do
        case $1 in
            --bandwidth) rate=$2; shift 2 ;;
            --delay) delay=$2; shift 2 ;;
            --host-env) host_env+=("$2"); shift 2 ;;
            --name) set_name "$2"; shift 2 ;;
            --state) STATE=$2; shift 2 ;;
            *) [ -z "$n" ] || die "unexpected argument $1"; n=$1; shift ;;
        esac
    done
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "up: N must be 1..200 (got '${n}')"
    need_tools
    [ ! -e "$STATE/hosts" ] || die "a testbed is already up (state: $STATE); run 'testbed.sh down' first"
    ! ip link show "$PREFIX-br0" >/dev/null 2>&1 || die "a testbed named $PREFIX is already up: give this one another --name and --state"
    mkdir -p "$STATE" && chmod 700 "$STATE" && touch "$STATE/.tbdprof-testbed"
    echo "$PREFIX" > "$STATE/name"
    trap 'echo "testbed: up failed, tearing down" >&2; cmd_down >/dev/null 2>&1 || true' EXIT

    printf '127.0.0.1 localhost\n' > "$STATE/hosts"
    for ((i = 0; i < n; i++)); do printf '%s.%d node%d\n' "$SUBNET" $((i + 1)) "$i" >> "$STATE/hosts"; done
    echo "$n" > "$STATE/n"

    ssh-keygen -q -t ed25519 -N '' -C tbdprof-testbed -f "$STATE/id_ed25519"
    cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
    ssh-keygen -q -t ed25519 -N '' -f "$STATE/host_key"
    cat > "$STATE/ssh_config" <<EOF
Host node* localhost
    User root
    IdentityFile $STATE/id_ed25519
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ConnectTimeout 5
EOF
    mkdir -p /run/sshd

    ip link add "$PREFIX-br0" type bridge
    ip link set "$PREFIX-br0" up
    for ((i = 0; i < n; i++)); do
        local h=node$i ns=$PREFIX-node$i
        ip netns add "$ns"
        ip link add "$PREFIX-v$i" type veth peer name eth0 netns "$ns"
        ip link set "$PREFIX-v$i" master "$PREFIX-br0" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip addr add "$SUBNET.$((i + 1))/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
        apply_shaping "$h" "$rate" "$delay"
        {
            cat <<EOF
ListenAddress $SUBNET.$((i + 1))
HostKey $STATE/host_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $STATE/authorized_keys
UsePAM no
StrictModes no
PidFile none
MaxStartups 100
MaxSessions 100
EOF
            for e in "${host_env[@]}"; do [ "${e%%:*}" = "$h" ] && echo "SetEnv ${e#*:}"; done
        } > "$STATE/sshd_config.$h"
        # unshare: own hostname and own /etc/hosts and ssh client config (bind mounts
        # visible only to this host). sshd -D stays in the foreground: its pid is the host's.
        ip netns exec "$ns" unshare --uts --mount --propagation private sh -c \
            "hostname $h && mount --bind '$STATE/hosts' /etc/hosts && mount --bind '$STATE/ssh_config' /etc/ssh/ssh_config && exec /usr/sbin/sshd -D -e -f '$STATE/sshd_config.$h'" \
            >"$STATE/sshd.$h.log" 2>&1 &
        echo $! > "$STATE/$h.pid"
    done
    for ((i = 0; i < n; i++)); do
        local ok=""
        for _ in $(seq 50); do
            if ip netns exec "$PREFIX-node0" bash -c "exec 3<>/dev/tcp/$SUBNET.$((i + 1))/22" 2>/dev/null; then ok=1; break; fi
            sleep 0.1
        done
        [ -n "$ok" ] || die "sshd on node$i did not come up: $(tail -n 3 "$STATE/sshd.node$i.log")"
    done
    trap - EXIT
    echo "testbed: $n hosts up (node0..node$((n - 1)), $SUBNET.1-$((n))); state in $STATE" >&2
}

cmd_shape() {
    local rate="" delay=""
    while [ $# -gt 0 ]; do
        case $1 in
            --bandwidth) rate=$2; shift 2 ;;
            --delay) delay=$2; shift 2 ;;
            --state) STATE=$2; shift 2 ;;
            *) die "unexpected argument $1" ;;
        esac
    done
    [ -f "$STATE/n" ] || die "no testbed is up (state: $STATE)"
    load_state
    for ((i = 0; i < $(cat "$STATE/n"); i++)); do apply_shaping "node$i" "$rate" "$delay"; done
}

need_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v srun >/dev/null \
        && command -v munged >/dev/null && return 0
    echo "testbed: installing SLURM (slurmctld slurmd slurm-client munge)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge) >&2 \
        || die "could not install SLURM with apt-get"
}

cmd_slurm() {  # munged and slurmctld on node0, slurmd on every host; clients need SLURM_CONF
    while [ $# -gt 0 ]; do
        case $1 in
            --state) STATE=$2; shift 2 ;;
            *) die "unexpected argument $1" ;;
        esac
    done
    [ -f "$STATE/n" ] || die "no testbed is up (state: $STATE)"
    need_slurm
    local n d=$STATE/slurm cpus pid0 idle=0
    n=$(cat "$STATE/n")
    cpus=$(nproc)
    [ ! -e "$d" ] || die "SLURM is already running on this testbed ($d)"
    mkdir -p "$d/ctld"
    # munge: a fresh key and its own socket, reached by every host through the filesystem
    dd if=/dev/urandom of="$d/munge.key" bs=1024 count=1 status=none
    chmod 400 "$d/munge.key"
    {
        cat <<EOF
ClusterName=tbdprof
SlurmctldHost=node0($SUBNET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$d/munge.socket
CredType=cred/munge
StateSaveLocation=$d/ctld
SlurmdSpoolDir=$d/spool-%n
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd-%n.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=5
EOF
        for ((i = 0; i < n; i++)); do echo "NodeName=node$i NodeAddr=$SUBNET.$((i + 1)) CPUs=$cpus State=UNKNOWN"; done
        echo "PartitionName=testbed Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE"
    } > "$d/slurm.conf"
    # slurmd needs cgroup v1 hierarchies; the hosts' own /sys (ip netns exec's sysfs) has none
    printf 'CgroupPlugin=cgroup/v1\nCgroupAutomount=yes\n' > "$d/cgroup.conf"
    for ((i = 0; i < n; i++)); do
        nsenter --target "$(host_pid "node$i")" --mount -- sh -c 'mountpoint -q /sys/fs/cgroup || {
            mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup && for c in freezer cpuset memory devices cpu cpuacct; do
                mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done; }' \
            || die "cannot mount cgroup hierarchies on node$i"
    done
    pid0=$(host_pid node0)
    nsenter --target "$pid0" --net --uts --mount -- munged --force --key-file="$d/munge.key" --socket="$d/munge.socket" \
        --pid-file="$d/munged.pid" --log-file="$d/munged.log" --seed-file="$d/munged.seed" \
        || die "munged did not start: $(tail -n 3 "$d/munged.log" 2>/dev/null)"
    nsenter --target "$pid0" --net --uts --mount -- slurmctld -i -f "$d/slurm.conf" \
        || die "slurmctld did not start: $(tail -n 3 "$d/slurmctld.log" 2>/dev/null)"
    for ((i = 0; i < n; i++)); do
        nsenter --target "$(host_pid "node$i")" --net --uts --mount -- slurmd -N "node$i" -f "$d/slurm.conf" \
            || die "slurmd on node$i did not start: $(tail -n 3 "$d/slurmd-node$i.log" 2>/dev/null)"
    done
    for _ in $(seq 150); do
        idle=$(nsenter --target "$pid0" --net --uts --mount -- env SLURM_CONF="$d/slurm.conf" \
            sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)
        [ "$idle" -ge "$n" ] && break
        sleep 0.2
    done
    [ "$idle" -ge "$n" ] || die "SLURM nodes did not come up idle: $(tail -n 3 "$d/slurmctld.log")"
    echo "testbed: SLURM up ($n nodes, partition testbed)" >&2
    echo "SLURM_CONF=$d/slurm.conf"
}

cmd_exec() {
    if [ "${1:-}" = --state ]; then STATE=$2; shift 2; fi
    [ $# -ge 2 ] || die "exec: usage: testbed.sh exec [--state DIR] HOST COMMAND..."
    local pid
    pid=$(host_pid "$1")
    shift
    exec nsenter --target "$pid" --net --uts --mount --wd="$PWD" -- "$@"
}

cmd_down() {
    local name=""
    while [ $# -gt 0 ]; do
        case $1 in
            --state) STATE=$2; shift 2 ;;
            --name) name=$2; shift 2 ;;
            *) die "unexpected argument $1" ;;
        esac
    done
    [ "$(id -u)" = 0 ] || die "must run as root"
    load_state
    [ -z "$name" ] || set_name "$name"
    # every host named NAME-node*: also those of a testbed whose state folder was lost
    local ns pids
    for ns in $(ip netns list 2>/dev/null | awk -v p="$PREFIX" '$1 ~ ("^" p "-node[0-9]+$") {print $1}'); do
        # every process in the host: sshd, sessions, ranks left by a failed launch
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
    done
    sleep 0.3
    for ns in $(ip netns list 2>/dev/null | awk -v p="$PREFIX" '$1 ~ ("^" p "-node[0-9]+$") {print $1}'); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$PREFIX-br0" 2>/dev/null || true
    # only files this script made: the folder holds the throwaway key
    [ ! -f "$STATE/.tbdprof-testbed" ] || rm -rf "$STATE"
    echo "testbed: down" >&2
}

case ${1:-} in
    up | shape | exec | slurm | down) c=$1; shift; "cmd_$c" "$@" ;;
    deps) need_tools ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
