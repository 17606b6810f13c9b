"""`--profile`: py-spy records the process tree doing each part's work (collapsed stacks).

Files land beside the results file (by default bench/results/profile-<part>.txt; flamegraph.pl
or speedscope read them), with a short summary of where the time went, in our code, in
profile-<part>.top.txt.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.env import VENV_BIN, BenchError


def py_spy() -> str:
    found = VENV_BIN / "py-spy"
    if found.exists():
        return str(found)
    other = shutil.which("py-spy")
    if other is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return other


class Recording:
    def __init__(self, pid: int, out: Path, rate: int = 200):
        self.out = out
        self.process = subprocess.Popen(
            [py_spy(), "record", "--subprocesses", "--idle", "--format", "raw", "--rate", str(rate),
             "--output", str(out), "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Path:
        self.process.send_signal(2)  # SIGINT: py-spy writes its file and exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.out.exists():
            self.out.with_suffix(".top.txt").write_text(top(self.out))
        else:
            print(f"bench: py-spy wrote no profile: {self.process.stderr.read().decode()[-300:]}",
                  file=sys.stderr)
        return self.out


def top(path: Path, lines: int = 40) -> str:
    """Inclusive share of samples per function of ours (app/, workers/) and the libraries below."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            key = re.sub(r":\d+\)$", ")", frame)
            if key not in seen:
                seen.add(key)
                inclusive[key] += int(count)
    out = [f"{total} samples (idle threads included)"]
    for frame, count in inclusive.most_common():
        if "process " in frame or "<module>" in frame:
            continue
        out.append(f"{100 * count / max(1, total):5.1f}%  {frame}")
        if len(out) > lines:
            break
    return "\n".join(out) + "\n"
