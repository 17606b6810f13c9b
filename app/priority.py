"""Running behind the web server for the CPU: the intake drainer's priority.

`nice` orders the processes of one session only. With the kernel's autogroups (on by default
on desktop and server kernels alike) every session shares the CPU as one, whatever its
processes' nice values, and honcho starts each Procfile line in a session of its own: at
`nice` 10 the drainer still took two thirds of a core from the web server's session during a
burst (wrk, 10 s rounds). So a process alone in its session sets its session's niceness too;
one that shares its session (the children of `up`) only sets its own, which orders it behind
the web server there, and never slows the others.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")


def run_behind(niceness: int, proc: Path = PROC) -> None:
    """Lower this process's CPU priority by `niceness` (0 the default, 19 the lowest)."""
    os.nice(niceness)
    if not alone_in_session(proc):
        return
    try:
        (proc / "self" / "autogroup").write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError as exc:  # a kernel without autogroups: `nice` alone orders the processes
        log.debug("session priority left as it is: %s", exc)


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


def _parent(proc: Path, pid: int) -> int:
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
