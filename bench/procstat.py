"""What the benches read of a process in /proc: its CPU time and its resident memory.

Imported by the bench scripts as ``from procstat import ...`` (a script's own directory
is first on its path).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CLK_TCK", "cpu_seconds", "rss_mb"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """VmRSS in MB (NaN once the process is gone from /proc's view of it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
