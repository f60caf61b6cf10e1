"""Operator CLI: what is registered in discovery.

    python -m dynamo.runtime list [--namespace NS] [--discovery-backend etcd] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from dynamo.runtime.config import RuntimeConfig, add_discovery_args
from dynamo.runtime.discovery import open_discovery
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.identity import INSTANCES_ROOT


async def list_instances(config: RuntimeConfig, all_namespaces: bool) -> list[InstanceRecord]:
    discovery = open_discovery(config.discovery)
    await discovery.start()
    try:
        prefix = INSTANCES_ROOT if all_namespaces else f"{INSTANCES_ROOT}{config.namespace}/"
        raw = await discovery.get_prefix(prefix)
    finally:
        await discovery.close()
    records = []
    for key, value in sorted(raw.items()):
        try:
            records.append(InstanceRecord.from_json(value))
        except ValueError as e:
            print(f"warning: skipping malformed record {key}: {e}", file=sys.stderr)
    return records


def format_table(records: list[InstanceRecord]) -> str:
    if not records:
        return "no instances registered"
    rows = [("NAMESPACE", "ENDPOINT", "INSTANCE", "ADDRESS", "PID", "MODEL", "ROLE")]
    for r in records:
        card = r.metadata.get("model_card") or {}
        rows.append((r.namespace, f"{r.component}.{r.endpoint}", r.instance_id, r.target, str(r.pid),
                     str(card.get("served_model_name", "-")), str(card.get("role", "-"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamo.runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list registered namespaces, endpoints, instances and models")
    add_discovery_args(p_list)
    p_list.add_argument("--all-namespaces", "-A", action="store_true", help="every namespace")
    p_list.add_argument("--json", action="store_true", help="one JSON object per instance")
    args = parser.parse_args(argv)
    config = RuntimeConfig.from_args(args)
    try:
        records = asyncio.run(list_instances(config, args.all_namespaces))
    except Exception as e:  # unreachable etcd etc.: say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        for r in records:
            print(r.to_json().decode())
    else:
        print(format_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
