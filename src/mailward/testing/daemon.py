"""What the private test daemons (clamd, unbound) share: stopping one for sure.

Used by `testing.clamd` and `testing.unbound`, also from a `weakref.finalize` at
interpreter exit, so a failed test never leaves a daemon or its temp dir behind.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL


def terminate(process: subprocess.Popen[bytes], directory: Path | None = None) -> None:
    """Stop `process` (SIGTERM, then SIGKILL) and reap it; remove `directory` if given."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
