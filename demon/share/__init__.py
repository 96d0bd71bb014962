"""What the package ships besides code, so that an installed wheel is enough:

- ``policies/``: the example policy set (``policies/lab/``: the lab's, with
  second-scale timers); ``demon-watch --init-policies DIR`` copies it;
- ``docs/``: the reference pages (fabric, RPC, engine API, recordings, backtests, …);
- ``contrib/``: the systemd units and the configuration file example;
- the lab's raw sFlow recording (``demon/data/lab-over-cap.pcap`` and its fabric),
  which ``demon-watch --demo`` backtests the lab's policies on.

``python -m demon.share`` prints where they are installed; ``python -m
demon.share --copy DIR`` copies them all. In the repository ``policies``, ``docs``
and ``contrib`` here are links to the top-level directories, so there is one copy
of each.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent
POLICIES = ROOT / "policies"
DOCS = ROOT / "docs"
CONTRIB = ROOT / "contrib"
DEMO_POLICIES = POLICIES / "lab"
RECORDING = ROOT.parent / "data" / "lab-over-cap.pcap"
RECORDING_FABRIC = RECORDING.with_name("lab-over-cap.fabric.json")
PARTS = {"policies": POLICIES, "docs": DOCS, "contrib": CONTRIB,
         "recordings": RECORDING.parent}


class ShareError(Exception):
    """A copy that would overwrite something (the message names it)."""


def copy_tree(source: Path, dest: Path) -> list[Path]:
    """Copy ``source`` into ``dest`` (created); identical files are skipped, a
    different existing file is never overwritten. Returns the files written."""
    clashes = []
    plan = []
    for path in sorted(source.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        target = dest / path.relative_to(source)
        if target.exists():
            if not filecmp.cmp(path, target, shallow=False):
                clashes.append(target)
            continue
        plan.append((path, target))
    if clashes:
        raise ShareError(f"{clashes[0]} exists and differs (nothing was copied; move it away "
                         f"or pick another directory)")
    for path, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return [target for _, target in plan]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demon.share",
                                     description="Where the installed example policies, docs, "
                                                 "systemd units and recordings are.")
    parser.add_argument("--copy", metavar="DIR", type=Path,
                        help="copy them into DIR/policies, DIR/docs, DIR/contrib, DIR/recordings")
    args = parser.parse_args(argv)
    if args.copy is None:
        for name, path in PARTS.items():
            print(f"{name:<11} {path}")
        return 0
    try:
        written = [p for name, path in PARTS.items() for p in copy_tree(path, args.copy / name)]
    except (ShareError, OSError) as exc:
        print(f"demon.share: {exc}", file=sys.stderr)
        return 2
    print(f"{len(written)} file(s) written under {args.copy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
