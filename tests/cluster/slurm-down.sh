#!/usr/bin/env bash
# Stop the one-node SLURM cluster that tests/cluster/slurm-up.sh started, by the PIDs
# in its pid files: first cancel any job still queued or running, then slurmd,
# slurmctld and munged, each waited for (SIGKILL after 15 s). A pid file whose
# process is gone, or whose PID now belongs to another program, is skipped.
# Then, with every daemon stopped, it removes the /etc/slurm/slurm.conf and gres.conf
# that slurm-up.sh wrote (only those: it checks the first line). Left behind, that file
# names a controller that no longer runs, and every later `snakemake` start on this
# machine (the test suite's too) waits ~10 s: the SLURM executor plugin runs
# `scontrol show config` on import, which retries the dead controller for
# MessageTimeout (10 s). Without a slurm.conf, scontrol fails at once.
# Safe to run twice; exits 0 unless a daemon could not be stopped.
set -uo pipefail

S=/tmp/slurm
rc=0

alive() {  # alive PID NAME: PID runs a program called NAME
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

# Jobs left behind (e.g. snakemake was killed): cancel them while slurmctld is up.
if [ -s "$S/slurmctld.pid" ] && alive "$(cat "$S/slurmctld.pid")" slurmctld; then
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// }" ]; then
        echo "slurm-down: cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -t RUNNING,COMPLETING,PENDING -o %A 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

stop() {  # stop PIDFILE NAME
    local pidfile=$1 name=$2 pid
    [ -s "$pidfile" ] || { echo "slurm-down: $name: no pid file $pidfile"; return 0; }
    pid=$(cat "$pidfile")
    if ! alive "$pid" "$name"; then
        echo "slurm-down: $name (pid $pid) is not running"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 30); do
        alive "$pid" "$name" || break
        sleep 0.5
    done
    if alive "$pid" "$name"; then
        echo "slurm-down: $name (pid $pid) ignored SIGTERM for 15 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
        sleep 1
    fi
    if alive "$pid" "$name"; then
        echo "slurm-down: could not stop $name (pid $pid)" >&2
        rc=1
    else
        echo "slurm-down: stopped $name (pid $pid)"
        rm -f "$pidfile"
    fi
}

stop "$S/slurmd.pid" slurmd
stop "$S/slurmctld.pid" slurmctld
stop /run/munge/munged.pid munged

for CONF in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ "$rc" -eq 0 ] && [ -f "$CONF" ] \
        && [ "$(head -n 1 "$CONF")" = "# Written by dmflow tests/cluster/slurm-up.sh: a one-node CI cluster." ]; then
        rm -f "$CONF"
        echo "slurm-down: removed $CONF (written by slurm-up.sh)"
    fi
done
exit $rc
