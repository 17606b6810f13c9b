"""`release-pipeline up`'s children: started together, each restarted when it dies, saying so.

Restarts back off (1 s, doubling, at most 30 s) so a child that cannot start does not spin; one
that ran for a minute counts as healthy again and restarts at once the next time.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
HEALTHY_AFTER = 60.0


def next_delay(previous: float, ran_for: float) -> float:
    """How long to wait before restarting a child that ran `ran_for` seconds."""
    if ran_for >= HEALTHY_AFTER:
        return 0.0
    return min(MAX_DELAY, max(FIRST_DELAY, previous * 2))


@dataclass
class Child:
    name: str
    argv: list[str]
    options: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started: float = 0.0
    delay: float = 0.0
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, **self.options)
        self.started = time.monotonic()
        self.restart_at = None


class Supervisor:
    def __init__(self, children: list[Child], say: Callable[[str], None]):
        self.children = children
        self.say = say
        self.stopping = False

    def start(self) -> None:
        for child in self.children:
            child.start()

    def tend(self) -> None:
        """One look at every child: schedule a restart for the dead, restart those due."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and child.process.poll() is not None:
                child.delay = next_delay(child.delay, now - child.started)
                child.restart_at = now + child.delay
                self.say(f"{child.name} exited with status {child.process.returncode}; "
                         f"restarting it{f' in {child.delay:g} s' if child.delay else ''}")
            if child.restart_at is not None and now >= child.restart_at:
                child.start()
                self.say(f"{child.name} restarted (pid {child.process.pid})")

    def run(self, pause: float = 0.5) -> None:
        while not self.stopping:
            self.tend()
            time.sleep(pause)

    def stop(self, timeout: float = 20) -> None:
        self.stopping = True
        alive = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in alive:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in alive:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
