"""Where the POX checkout is: ``$POX_HOME``, else the copy ``scripts/setup`` puts beside the venv.

POX is a git checkout, never a pip package (PyPI's ``pox`` is another project).
``scripts/setup`` unpacks the snapshot from the shared directory, or clones it when
asked, into ``.third_party/pox`` at the top of the checkout (ignored by git).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / ".third_party" / "pox"


def pox_home() -> Path | None:
    """``$POX_HOME`` when set (it wins), else the local copy when it holds ``pox.py``, else None."""
    env = os.environ.get("POX_HOME")
    if env:
        return Path(env)
    return LOCAL if (LOCAL / "pox.py").is_file() else None
