# PYTHON_ARGCOMPLETE_OK
"""``demon-netcheck``: compare each switch's flow table with the intended state (baseline B9).

Intended = the fabric role's baseline + the static entries + the active mirrors.
The table comes from the component (``--rpc``: ``flow_stats``; mirrors from
``list_mirrors``) or straight from Open vSwitch (``--ovs-ofctl``: ``dump-flows``).
Comparison is a multiset difference of entries (priority, match, actions, cookie,
timeouts), independent of order and of counters. Exit 0: as intended; 1: differences;
2: could not check.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from demon.controller import merge, of10, of13
from demon.controller.fabric import (Entry, Fabric, FabricError, StaticConfig, intended_entries,
                                     forward_actions, load_fabric, load_static, uses_l2_table)
from demon.controller.spec import LEARNED_COOKIE, SpecError, is_mirror_cookie, parse_mirror_params
from sflow import cliopts

# Stands for a mirror entry's hard_timeout, which is not compared (see mirror_intent).
UNCHECKED_HARD = -1


@dataclass
class SwitchDiff:
    dpid: int
    name: str
    missing: list[Entry] = field(default_factory=list)
    unexpected: list[Entry] = field(default_factory=list)
    checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.missing and not self.unexpected

    def to_json(self) -> dict[str, Any]:
        return {"dpid": self.dpid, "name": self.name, "clean": self.clean, "checked": self.checked,
                "missing": [e.describe() for e in self.missing],
                "unexpected": [e.describe() for e in self.unexpected], "notes": self.notes}


def compare(intended: Iterable[Entry], actual: Iterable[Entry]) -> tuple[list[Entry], list[Entry]]:
    """``(missing, unexpected)``: order-independent, duplicates counted."""
    intended, actual = list(intended), list(actual)
    want = Counter(e.key() for e in intended)
    have = Counter(e.key() for e in actual)
    by_key: dict[tuple[Any, ...], Entry] = {}
    for e in intended:
        by_key.setdefault(e.key(), e)
    for e in actual:
        by_key.setdefault(e.key(), e)
    missing = [by_key[k] for k, n in sorted((want - have).items(), key=_order) for _ in range(n)]
    unexpected = [by_key[k] for k, n in sorted((have - want).items(), key=_order) for _ in range(n)]
    return missing, unexpected


def _order(item: tuple[tuple[Any, ...], int]) -> tuple[Any, ...]:
    key = item[0]
    return (-key[1], repr(key))


def mirror_intent(records: Iterable[Mapping[str, Any]], static: StaticConfig | None,
                  openflow: str = "1.3", fabric: Fabric | None = None) -> dict[int, list[Entry]]:
    """Entries the ``list_mirrors`` records imply, per dpid, compiled as the components
    compile them: overlapping taps merged into shared entries (``merge.py``).

    A mirror entry's ``hard_timeout`` is the lifetime left when the component last
    (re)compiled it, which the records cannot tell: it is left out of the comparison
    (``UNCHECKED_HARD``), the rest of the entry is exact.
    """
    rules: dict[int, list[merge.MirrorRule]] = {}
    for rec in records:
        params = {k: rec[k] for k in ("dpid", "match", "copy_port", "vlan_tag", "bidirectional",
                                      "idle_timeout", "hard_timeout", "priority")}
        params["tap_id"] = rec.get("tap_id") or f"cookie-{rec['cookie']:x}"
        spec = parse_mirror_params(params, openflow)
        rules.setdefault(spec.dpid, []).extend(
            merge.rules_for(spec, rec["cookie"], float(rec.get("installed_at") or 0.0)))
    out: dict[int, list[Entry]] = {}
    for dpid, dpid_rules in rules.items():
        def forward(match: Mapping[str, Any], dpid: int = dpid) -> tuple[str, ...]:
            return forward_actions(static, dpid, match)
        if openflow == "1.0":
            compiled = of10.compile_mirrors(dpid_rules, 0.0, forward)
        else:
            l2 = fabric is not None and uses_l2_table(fabric, dpid, openflow)
            compiled = of13.compile_mirrors(dpid_rules, 0.0, forward, l2)
        out[dpid] = [replace(c.entry, hard_timeout=UNCHECKED_HARD) for c in compiled]
    return out


def check_switch(fabric: Fabric, dpid: int, table: list[Entry], static: StaticConfig | None,
                 mirrors: list[Entry] | None, openflow: str = "1.3") -> SwitchDiff:
    """Diff one switch. ``mirrors=None``: mirror entries are not checked (no source for them)."""
    role = fabric.role(dpid)
    diff = SwitchDiff(dpid, role.name if role else f"dpid{dpid}")
    intended = intended_entries(fabric, dpid, openflow, static if static is not None else StaticConfig())
    learned = [e for e in table if e.cookie == LEARNED_COOKIE]
    if learned:  # the switch's own L2 learning: state, not configuration
        table = [e for e in table if e.cookie != LEARNED_COOKIE]
        diff.notes.append(f"{len(learned)} learned L2 entries not compared")
    if mirrors is None:
        skipped = [e for e in table if is_mirror_cookie(e.cookie)]
        table = [e for e in table if not is_mirror_cookie(e.cookie)]
        if skipped:
            diff.notes.append(f"{len(skipped)} mirror entries not checked (no --rpc to list the taps)")
    else:
        unchecked = lambda e: replace(e, hard_timeout=UNCHECKED_HARD)  # noqa: E731 (see mirror_intent)
        intended = intended + [unchecked(e) for e in mirrors]
        table = [unchecked(e) if is_mirror_cookie(e.cookie) else e for e in table]
    diff.missing, diff.unexpected = compare(intended, table)
    diff.checked = len(table)
    return diff


def render(diffs: list[SwitchDiff]) -> str:
    lines = []
    for d in diffs:
        status = "ok" if d.clean else f"{len(d.missing)} missing, {len(d.unexpected)} unexpected"
        lines.append(f"{d.name} (dpid {d.dpid}): {status} ({d.checked} entries)")
        lines += [f"  missing:    {e.describe()}" for e in d.missing]
        lines += [f"  unexpected: {e.describe()}" for e in d.unexpected]
        lines += [f"  note: {n}" for n in d.notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demon-netcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--fabric", required=True, help="fabric description JSON")
    parser.add_argument("--static", help="intended static config (default: the fabric's static section)")
    parser.add_argument("--rpc", help="component RPC address (tcp:HOST:PORT or unix:/path)")
    parser.add_argument("--token-file", default="/run/pytapdemon/rpc.token")
    parser.add_argument("--ovs-ofctl", action="store_true",
                        help="read tables with ovs-ofctl dump-flows (mirrors checked only with --rpc too)")
    parser.add_argument("--openflow", choices=("1.0", "1.3"),
                        help="protocol of the switches (default: from the component, else 1.3)")
    parser.add_argument("--switch", action="append", type=int, metavar="DPID", help="only these switches")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    cliopts.add_common(parser, exits={0: "every switch's table is as intended", 1: "differences (printed)",
                                      2: "could not check (usage, fabric, RPC or ovs-ofctl failure)"},
                       log_level="warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = cliopts.parse_args(build_parser(), argv)
    if not args.rpc and not args.ovs_ofctl:
        print("demon-netcheck: give --rpc ADDR or --ovs-ofctl", file=sys.stderr)
        return 2
    try:
        fabric = load_fabric(args.fabric)
        static = load_static(args.static) if args.static else fabric.static
        client = None
        openflow = args.openflow or "1.3"
        mirrors: dict[int, list[Entry]] | None = None
        if args.rpc:
            from demon.rpc.client import RpcClient
            from demon.rpc.token import read_token

            client = RpcClient(args.rpc, read_token(args.token_file), timeout=10.0)
            openflow = args.openflow or client.hello().get("openflow", "1.3")
            mirrors = mirror_intent(client.list_mirrors(), static, openflow, fabric)
        dpids = args.switch or sorted(fabric.switches)
        diffs = []
        for dpid in dpids:
            if args.ovs_ofctl:
                from demon.controller.ovsofctl import dump_flows

                role = fabric.role(dpid)
                table = dump_flows(role.name if role else f"s{dpid}", openflow)
            else:
                assert client is not None
                table = [of13.entry_from_json(r) for r in client.flow_stats(dpid)]
            diffs.append(check_switch(fabric, dpid, table, static,
                                      None if mirrors is None else mirrors.get(dpid, []), openflow))
    except (FabricError, SpecError) as exc:
        print(f"demon-netcheck: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # RPC errors, ovs-ofctl failures: one readable line
        print(f"demon-netcheck: cannot read the network state: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps([d.to_json() for d in diffs], indent=2) if args.json else render(diffs))
    return 0 if all(d.clean for d in diffs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
