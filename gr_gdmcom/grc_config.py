"""This checkout's ``grc/`` in GNU Radio Companion's ``[grc] local_blocks_path`` (``~/.gnuradio/config.conf``).

GRC reads ``GRC_BLOCKS_PATH`` first and ``local_blocks_path`` after it, and a block
YAML read later replaces one with the same id ("Block with id ... overwritten").
So the config may list exactly one gr_gdmcom checkout: set-up replaces an earlier
checkout's entry (any folder holding ``gr_gdmcom_semantic_source.block.yml``, or
a ``.../grc`` folder that no longer exists) instead of appending, keeps every
other entry and the rest of the file as they are, and says what it changed::

    python -m gr_gdmcom.grc_config /path/to/checkout/grc [--config FILE]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import List, Tuple

MARKER = "gr_gdmcom_semantic_source.block.yml"
DEFAULT_CONFIG = "~/.gnuradio/config.conf"


def _ours(entry: str) -> bool:
    p = Path(os.path.expanduser(entry))
    return (p / MARKER).is_file() or (p.name == "grc" and not p.exists())


def new_paths(paths: List[str], grc_dir: str) -> List[str]:
    """``paths`` with this checkout's ``grc_dir`` in place of any earlier gr_gdmcom entry (appended when none)."""
    out, placed = [], False
    for entry in paths:
        if os.path.normpath(os.path.expanduser(entry)) == os.path.normpath(grc_dir) or _ours(entry):
            if not placed:
                out.append(grc_dir)
                placed = True
            continue
        out.append(entry)
    return out if placed else out + [grc_dir]


def update(config: Path, grc_dir: str) -> Tuple[List[str], List[str]]:
    """Rewrite ``local_blocks_path`` in ``config`` (created if missing); returns (before, after)."""
    text = config.read_text() if config.exists() else ""
    lines = text.splitlines()
    section, where, before = None, None, []
    grc_at = None
    for i, line in enumerate(lines):
        m = re.match(r"\s*\[(.+?)\]\s*$", line)
        if m:
            section = m.group(1).strip()
            if section == "grc":
                grc_at = i
            continue
        m = re.match(r"\s*local_blocks_path\s*[=:]\s*(.*)$", line)
        if section == "grc" and m:
            where, before = i, [p for p in m.group(1).strip().split(os.pathsep) if p]
    after = new_paths(before, grc_dir)
    if after != before:
        entry = "local_blocks_path = " + os.pathsep.join(after)
        if where is not None:
            lines[where] = entry
        elif grc_at is not None:
            lines.insert(grc_at + 1, entry)
        else:
            lines += ([""] if lines else []) + ["[grc]", entry]
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("\n".join(lines) + "\n")
    return before, after


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grc_dir", help="this checkout's grc/ folder")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="GNU Radio's config file [default=%(default)r]")
    args = ap.parse_args(argv)
    config = Path(os.path.expanduser(args.config))
    grc_dir = os.path.abspath(args.grc_dir)
    before, after = update(config, grc_dir)
    if before == after:
        print(f"[setup] GNU Radio Companion: {config} already lists {grc_dir} (no change)")
    else:
        gone = [p for p in before if p not in after]
        print(f"[setup] GNU Radio Companion: [grc] local_blocks_path in {config} is now {os.pathsep.join(after)}"
              + (f" (replaced {', '.join(gone)})" if gone else " (added)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
