"""Reading :mod:`src.comm.wire`'s counts back: per site, direction and round, and the summary's table.

No NVFlare import here: the run summary reads these files in the job script's process.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["WIRE_FILE", "DIRECTIONS", "load_wire_bytes", "wire_summary", "wire_table", "human_bytes", "tensor_bytes"]

#: the log of every counted message, relative to the server's run folder
WIRE_FILE = Path("metrics") / "wire_bytes.jsonl"
#: task: server -> site; result: site -> server
DIRECTIONS = ("task", "result")


def tensor_bytes(state) -> int:
    """Raw bytes of the tensors/arrays in ``state`` (a computed figure: no serialisation, no headers)."""
    total = 0
    for v in state.values():
        if hasattr(v, "nbytes") and not callable(v.nbytes):
            total += int(v.nbytes)
        elif hasattr(v, "element_size"):
            total += int(v.numel() * v.element_size())
    return total


def load_wire_bytes(server_dir: str | Path) -> list[dict]:
    """Every counted message of a run (empty when the run counted none)."""
    path = Path(server_dir) / WIRE_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wire_summary(rows: list[dict], task: str = "train") -> dict[str, dict[str, list[int]]]:
    """``{site: {"task": [bytes of round 0, 1, ...], "result": [...]}}`` for ``task`` messages, in round order."""
    out: dict[str, dict[str, dict[int, int]]] = {}
    for i, r in enumerate(rows):
        if r.get("task") not in (task, None) or r.get("site") is None:
            continue
        rnd = r["round"] if r.get("round") is not None else i
        per = out.setdefault(r["site"], {d: {} for d in DIRECTIONS})[r["direction"]]
        per[rnd] = per.get(rnd, 0) + int(r["bytes"])
    return {site: {d: [v[k] for k in sorted(v)] for d, v in dirs.items()} for site, dirs in sorted(out.items())}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return f"{n}"


def wire_table(wire: dict[str, dict[str, list[int]]]) -> str:
    """Markdown: bytes of the ``train`` task per round, each site both ways, and the run's totals."""
    if not wire:
        return ""
    sites = sorted(wire)
    n_rounds = max(len(v) for dirs in wire.values() for v in dirs.values())
    head = "| round | " + " | ".join(f"{s} server->site | {s} site->server" for s in sites) + " |"
    lines = ["Bytes on the wire per round (train task: NVFlare's FOBS serialisation of each message as the server "
             "sent or received it; transport framing and TCP/TLS not included)", "", head,
             "|---|" + "---|---|" * len(sites)]
    for rnd in range(n_rounds):
        cells = []
        for s in sites:
            for d in DIRECTIONS:
                values = wire[s].get(d, [])
                cells.append(f"{values[rnd]:,}" if rnd < len(values) else "-")
        lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    down = sum(sum(wire[s].get("task", [])) for s in sites)
    up = sum(sum(wire[s].get("result", [])) for s in sites)
    lines += ["", f"Total: server -> sites {down:,} bytes ({human_bytes(down)}), sites -> server {up:,} bytes "
              f"({human_bytes(up)})"]
    return "\n".join(lines)
