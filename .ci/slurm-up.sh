#!/usr/bin/env bash
# A single-node SLURM cluster on this machine for the SLURM tests: Debian's slurm-wlm and munge,
# no accounting database, this host's CPUs and memory, every daemon run as root.
# Idempotent: packages already installed and daemons already answering are left as they are.
# Usage (as root): .ci/slurm-up.sh   — exits non-zero if the node is not idle within the timeout.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
    echo "slurm-up: must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
conf=/etc/slurm/slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge

# slurmd -C reports this node's real CPU layout and memory; slurm.conf must not promise more.
node_line=$(slurmd -C | head -n1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
cat >"$conf.new" <<CONF
# Written by .ci/slurm-up.sh: a one-node test cluster without accounting.
ClusterName=cardigan-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue must still see finished jobs when Snakemake polls it (the executor checks MinJobAge).
MinJobAge=600
SchedulerParameters=batch_sched_delay=0
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

changed=1
if [ -f "$conf" ] && cmp -s "$conf" "$conf.new"; then changed=0; fi
mv "$conf.new" "$conf"

# munge: the package creates a key on install; create one if it is missing.
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi

running() { pgrep -x "$1" >/dev/null; }
if [ "$changed" = 1 ]; then
    # A new configuration: restart whatever runs with the old one.
    for d in slurmd slurmctld; do
        if running "$d"; then pkill -x "$d"; fi
    done
    for _ in $(seq 50); do running slurmd || running slurmctld || break; sleep 0.2; done
fi
running slurmctld || slurmctld
running slurmd || slurmd

for _ in $(seq 60); do
    state=$(sinfo -h -N -n "$host" -o %t 2>/dev/null || true)
    if [ "$state" = idle ] || [ "$state" = mix ] || [ "$state" = alloc ]; then
        echo "slurm-up: node $host is $state"
        sinfo
        exit 0
    fi
    if [ "$state" = down ] || [ "$state" = "down*" ] || [ "$state" = drain ]; then
        scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
    fi
    sleep 1
done
echo "slurm-up: node $host did not become idle (state: ${state:-none})" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
