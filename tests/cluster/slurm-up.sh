#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian 12, as root, no systemd),
# for the CI check tests/cluster/run.sh. Stop it with tests/cluster/slurm-down.sh
# (which also removes the /etc/slurm/slurm.conf written here).
#
# Installs slurm-wlm and munge with apt-get (skipped when already installed), writes
# /etc/slurm/slurm.conf for one node 'localhost' with all CPUs and half the memory,
# no accounting database (so `sacct` does not work: the profile uses
# `slurm-status-command: squeue`, which needs MinJobAge well above the first status
# check delay) and two stand-in GPUs (gres.conf: /dev/null and /dev/zero, so that jobs
# asking for --gpus=1 are scheduled on a machine that has none; torch then finds no
# CUDA and train.device: auto trains on the CPU), starts munged, slurmctld
# and slurmd, waits until the node is idle and prints the daemons' PIDs.
#
# State, logs and pid files live under /tmp/slurm (munged's pid file is
# /run/munge/munged.pid). Exit status: 0 up, 3 daemons already running (nothing
# touched), anything else a failure (run slurm-down.sh to stop what did start).
set -euo pipefail

S=/tmp/slurm
PIDFILES=(/run/munge/munged.pid "$S/slurmctld.pid" "$S/slurmd.pid")

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-up: must run as root (installs packages, starts daemons)" >&2
    exit 1
fi

for f in "${PIDFILES[@]}"; do
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        echo "slurm-up: $(basename "$f" .pid) is already running (pid $(cat "$f")); run slurm-down.sh first" >&2
        exit 3
    fi
done

T0=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# A fresh state each time: no jobs recovered from an earlier cluster.
rm -rf "$S/state" "$S/spool"
mkdir -p "$S/state" "$S/spool" "$S/log"
MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) / 2 ))
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
# Written by dmflow tests/cluster/slurm-up.sh: a one-node CI cluster.
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that asks for no memory would take the whole node.
DefMemPerCPU=100
# Finished jobs stay visible to squeue for 5 minutes (the plugin's squeue status
# queries need >= 3x its first status delay).
MinJobAge=300
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$S/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
# Written by dmflow tests/cluster/slurm-up.sh: a one-node CI cluster.
# Two stand-in GPUs (slurmd counts a GPU only with a device file): jobs may ask for them,
# and what they get is /dev/null or /dev/zero, no GPU.
Name=gpu File=/dev/null
Name=gpu File=/dev/zero
CONF

install -d -o munge -g munge -m 755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
T1=$(date +%s)

runuser -u munge -- /usr/sbin/munged      # pid file: /run/munge/munged.pid
munge -n | unmunge >/dev/null
slurmctld                                  # pid file: $S/slurmctld.pid
slurmd -N localhost                        # pid file: $S/slurmd.pid (the hostname is not 'localhost')

for _ in $(seq 1 60); do
    sinfo -h -o %T 2>/dev/null | grep -qx idle && break
    sleep 0.5
done
if ! sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "slurm-up: the node did not become idle; state: $(sinfo -h -o '%T %E' 2>&1)" >&2
    tail -n 20 "$S/log/slurmctld.log" "$S/log/slurmd.log" >&2 || true
    exit 1
fi
for f in "${PIDFILES[@]}"; do
    for _ in $(seq 1 20); do [ -s "$f" ] && break; sleep 0.25; done
    [ -s "$f" ] || { echo "slurm-up: no pid file $f" >&2; exit 1; }
done

echo "slurm up: $(sinfo -h -o '%P %D node(s) %c cpus %m MB %T') ($(sinfo -V)); install+conf $((T1-T0))s, daemons $(( $(date +%s)-T1 ))s"
echo "PIDs munged=$(cat /run/munge/munged.pid) slurmctld=$(cat "$S/slurmctld.pid") slurmd=$(cat "$S/slurmd.pid")"
