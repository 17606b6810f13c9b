"""Running behind the web server for the CPU while a backlog waits: the intake drainer's priority.

A single delivery is recorded at once at the normal priority: behind busy cores (a build, a
swarm's engines), a low-priority drainer delayed every deploy's start by seconds. A backlog (a
burst) is recorded behind the web server answering the deliveries, in every idle moment.

`nice` orders the processes of one session only. With the kernel's autogroups (on by default)
every session shares the CPU as one, whatever its processes' nice values, and honcho starts each
Procfile line in a session of its own: at `nice` 10 the drainer still took two thirds of a core
from the web server during a burst (wrk, 10 s rounds). So a process alone in its session sets its
session's niceness too; one that shares its session (the children of `up`) sets only its own,
which orders it behind the web server there without slowing the others.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")


class Priority:
    """This process's CPU priority: normal, or `niceness` lower (0 the default, 19 the lowest)."""

    def __init__(self, niceness: int, proc: Path = PROC):
        self.normal = os.getpriority(os.PRIO_PROCESS, 0)
        self.lowered = min(19, self.normal + niceness)
        self.session = proc / "self" / "autogroup"
        self.session_normal = _autogroup_nice(self.session) if alone_in_session(proc) else None
        self.behind = False
        self.stuck = False  # not allowed to change it

    def run_behind(self, behind: bool) -> None:
        """Behind the other processes (True) or back beside them. Going back needs the right
        to raise a priority (root, or RLIMIT_NICE): without it the process stays behind."""
        if behind == self.behind or self.stuck:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, 0, self.lowered if behind else self.normal)
            if self.session_normal is not None:
                self.session.write_text(str(self.lowered if behind else self.session_normal))
        except OSError as exc:
            log.warning("CPU priority not changed (%s); recording %s", exc, "as before" if behind else "behind")
            self.stuck = True  # said once, not once per batch
            return
        self.behind = behind


def alone_in_session(proc: Path = PROC) -> bool:
    """Whether every other process of this session is one of this one's ancestors (the
    `sh -c` honcho runs a Procfile line with)."""
    session, me = os.getsid(0), os.getpid()
    ours, pid = {me}, os.getppid()
    while pid > 0 and pid not in ours:
        ours.add(pid)
        pid = _parent(proc, pid)
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            if os.getsid(int(entry.name)) == session:
                return False
        except OSError:
            continue  # gone meanwhile
    return True


def _autogroup_nice(path: Path) -> int | None:
    """The session's niceness ('/autogroup-85 nice 0'); None on a kernel without autogroups."""
    try:
        return int(path.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _parent(proc: Path, pid: int) -> int:
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
