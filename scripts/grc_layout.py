"""Flowgraphs as GNU Radio Companion draws them: overlap check, left-to-right layout, screenshots.

Runs GRC itself (its GUI classes compute every block's drawn size: parameters on
the face, ports, comments), so it needs an X display; under a virtual one:

    xvfb-run -a .venv/bin/python scripts/grc_layout.py check flowgraphs/*.grc
    xvfb-run -a .venv/bin/python scripts/grc_layout.py layout flowgraphs/*.grc      # rewrite positions
    xvfb-run -a .venv/bin/python scripts/grc_layout.py screenshot docs/img flowgraphs/*.grc

``check`` prints one JSON line per flowgraph (overlapping pairs, elements off the
canvas) and exits 1 when any; ``layout`` places the options, parameters, variables,
imports and snippets in rows at the top and the signal blocks left to right in
columns by their distance from the sources, then saves through GRC's own writer
(so opening and saving a flowgraph in GRC changes nothing); ``screenshot`` draws
each flowgraph with GRC's canvas code into a small PNG.  Run it with this
checkout's blocks: ``GRC_BLOCKS_PATH=$PWD/grc GR_CONF_GRC_LOCAL_BLOCKS_PATH=$PWD/grc``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

GAP = 24  # pixels between drawn elements
GRID = 8  # GRC's default snap grid
TOP_ROW_WIDTH = 1400  # wrap the rows of parameters/variables at this width
SIDE_BLOCKS = ("options", "parameter", "variable", "import", "snippet", "epy_module")


def _snap(v: float) -> int:
    return int(-(-v // GRID) * GRID)


def _rects(fg) -> list:
    """(name, kind, (x0, y0, x1, y1)) of every drawn block body with its ports, and of every comment."""
    out = []
    for b in fg.blocks:
        if not b.enabled:
            continue
        b.create_comment_layout()
        out.append((b.name, "block", tuple(b.get_extents())))
        c = b.get_extents_comment()
        if c[2] > c[0]:
            out.append((b.name, "comment", tuple(c)))
    return out


def overlaps(fg, margin: int = 2) -> dict:
    """Overlapping pairs of drawn rectangles, and elements reaching off the canvas (x or y < 0)."""
    rects = _rects(fg)
    pairs = []
    for i, (n1, k1, a) in enumerate(rects):
        for n2, k2, b in rects[i + 1:]:
            if n1 == n2:
                continue
            if a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin:
                pairs.append(f"{n1} {k1} / {n2} {k2}")
    off = [f"{n} {k}" for n, k, r in rects if r[0] < 0 or r[1] < 0]
    return dict(overlaps=pairs, off_canvas=off)


def _size(b) -> tuple:
    """Drawn width and height of a block with its ports and its comment, relative to its coordinate."""
    b.create_comment_layout()
    x, y = b.coordinate
    e, c = b.get_extents(), b.get_extents_comment()
    left = x - min(e[0], c[0])
    return left, max(e[2], c[2]) - min(e[0], c[0]), max(e[3], c[3]) - y


def layout(fg) -> None:
    """Top rows: options, parameters, variables, imports, snippets. Below: signal blocks in columns.
    Coordinates are whole multiples of GRC's grid, set in the block's state (GRC's own
    ``coordinate`` setter would shift them by half a block height to snap the centre)."""
    blocks = [b for b in fg.blocks if b.enabled]
    side = sorted([b for b in blocks if b.key in SIDE_BLOCKS], key=lambda b: SIDE_BLOCKS.index(b.key))
    x, y, row_h = GRID, GRID, 0
    for b in side:
        left, w, h = _size(b)
        if x > GRID and x + w > TOP_ROW_WIDTH:
            x, y, row_h = GRID, y + row_h + GAP, 0
        b.states["coordinate"] = (_snap(x + left), _snap(y))
        x += w + GAP
        row_h = max(row_h, h)
    top = _snap(y + row_h + 2 * GAP)
    # signal blocks: column = longest path from a block without inputs
    flow = [b for b in blocks if b.key not in SIDE_BLOCKS]
    preds = {b: [] for b in flow}
    for c in fg.connections:
        if c.enabled and c.sink_block in preds and c.source_block in preds:
            preds[c.sink_block].append(c.source_block)
    col: dict = {}

    def depth(b, seen=()):
        if b not in col:
            col[b] = 0 if not preds[b] or b in seen else 1 + max(depth(p, seen + (b,)) for p in preds[b])
        return col[b]

    for b in flow:
        depth(b)
    order = {b: i for i, b in enumerate(fg.blocks)}
    x = GRID
    for c in range(max(col.values(), default=-1) + 1):
        members = sorted([b for b in flow if col[b] == c], key=lambda b: order[b])
        sizes = [_size(b) for b in members]
        y = top
        for b, (left, w, h) in zip(members, sizes):
            b.states["coordinate"] = (_snap(x + left), _snap(y))
            y += h + GAP
        x += max((w for _, w, _ in sizes), default=0) + 2 * GAP


def screenshot(fg, path: Path, scale: float = 0.75) -> None:
    """Draw the flowgraph with GRC's canvas code into a palette PNG (small, for the docs)."""
    import cairo
    from PIL import Image
    fg.create_labels()
    fg.create_shapes()
    rects = [r for _, _, r in _rects(fg)]
    w = int(max(r[2] for r in rects) + GAP) + 1
    h = int(max(r[3] for r in rects) + GAP) + 1
    surface = cairo.ImageSurface(cairo.FORMAT_RGB24, int(w * scale), int(h * scale))
    cr = cairo.Context(surface)
    cr.set_source_rgb(1, 1, 1)
    cr.paint()
    cr.scale(scale, scale)
    fg.draw(cr)
    tmp = path.with_suffix(".tmp.png")
    surface.write_to_png(str(tmp))
    Image.open(tmp).convert("RGB").quantize(colors=64).save(path, optimize=True)
    tmp.unlink()


def run_in_grc(files, action) -> int:
    """Open ``files`` in GNU Radio Companion (its own Application and canvas classes), call
    ``action(page)`` for each page, close GRC; returns the number of failures ``action`` reported."""
    import gi
    gi.require_version("Gtk", "3.0")
    gi.require_version("PangoCairo", "1.0")
    from gi.repository import GLib
    from gnuradio import gr
    from gnuradio.grc.gui.Platform import Platform  # (before Application: GRC's own import order)
    from gnuradio.grc.gui.Application import Application

    platform = Platform(version=gr.version(), version_parts=(gr.major_version(), gr.api_version(),
                                                             gr.minor_version()),
                        prefs=gr.prefs(), install_prefix=gr.prefix())
    platform.build_library()
    app = Application([str(Path(f).resolve()) for f in files], platform)
    failures = []

    def _go():
        try:
            for page in app.main_window.notebook.get_children():
                if page.file_path:
                    failures.append(action(page, platform))
        finally:
            app.quit()
        return False

    GLib.timeout_add(500, _go)
    app.run([])
    return sum(bool(f) for f in failures)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in ("check", "layout", "screenshot"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv.pop(0)
    out_dir = Path(argv.pop(0)) if cmd == "screenshot" else None
    if not os.environ.get("DISPLAY"):
        print("grc_layout: needs an X display; run it under xvfb-run -a", file=sys.stderr)
        return 2

    def action(page, platform):
        fg, name = page.flow_graph, Path(page.file_path).name
        fg.update()  # labels and shapes, as GRC draws them (pages not shown yet have none)
        if cmd == "layout":
            layout(fg)
            fg.update()
            platform.save_flow_graph(page.file_path, fg)
        if cmd == "screenshot":
            out_dir.mkdir(parents=True, exist_ok=True)
            screenshot(fg, out_dir / (Path(page.file_path).stem + ".png"))
        found = overlaps(fg)
        print(json.dumps(dict(flowgraph=name, **found)), flush=True)
        return found["overlaps"] or found["off_canvas"]

    return 1 if run_in_grc(argv, action) else 0


if __name__ == "__main__":
    raise SystemExit(main())
