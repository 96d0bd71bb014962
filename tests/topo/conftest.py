"""The lab tests need Mininet; without it (a wheel installed into a plain venv) the
whole directory is skipped with the reason instead of failing at collection."""

from __future__ import annotations

import pytest

try:
    import mininet.net  # noqa: F401
except ImportError as exc:
    pytest.skip(f"tests/topo need Mininet ({exc}); on Debian bash scripts/setup makes a venv "
                "that sees it", allow_module_level=True)
