"""What machine a benchmark ran on, for the header of every table and JSON result."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """CPU model, core count, Python implementation and version, OS and release."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, {platform.python_implementation()}"
        f" {platform.python_version()}, {platform.system()} {platform.release()}"
    )
