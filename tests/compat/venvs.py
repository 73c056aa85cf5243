"""Small venvs for clients that cannot share the test environment.

python-consul, python-consul2 and py-consul all install a top-level `consul`
package, so the old two each get a venv of their own under `.venv-compat/`
(next to `.venv`), made from PyPI on first use and reused afterwards; a changed
pin rebuilds it. CI starts without them: the first test session builds them
(a few seconds each, with network access to PyPI like `make setup`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".venv-compat"


def python_for(requirement: str) -> Path:
    """The interpreter of a venv holding exactly `requirement` (e.g. `python-consul==1.1.0`)."""
    name = requirement.split("==")[0]
    venv = CACHE / name
    stamp = venv / ".requirement"
    python = venv / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == requirement:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    # No pip of its own (ensurepip is most of a venv's cost): the test venv's pip installs into it.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", requirement], check=True, timeout=300)
    stamp.write_text(requirement)
    return python
