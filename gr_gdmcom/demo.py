"""``scripts/demo.sh``: ``gdmcom link`` with the demo's defaults.

The defaults fill only options the user did not give, in any form argparse
accepts (``--snr 15``, ``--snr=15``, ``--out=x``, an unambiguous prefix ...),
and every path is taken from where the user stands: argparse parses the
command line, not the shell script.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: What ``scripts/demo.sh`` runs when an option is not given.  k = 10 DDIM-inversion steps at
#: the transmitter and m = 0 at the receiver: the paper's best (k, m) in its Table II; with the
#: patch-gmm prior the demo decodes the held-out astronaut 0.5-0.6 dB better than k = m = 5 at 5-10 dB
#: (docs/validation.md section 6: 0.3-0.4 dB over the held-out photographs, numpy channel).
DEMO_DEFAULTS = dict(model="patch-gmm", snr=[5.0, 10.0, 20.0], out="out/demo", k=10, m=0,
                     images=[str(Path(__file__).resolve().parent / "data" / "astronaut.png")])


def build_parser():
    """The ``gdmcom`` parser with ``link``'s required options turned into the demo's defaults."""
    import argparse

    from .cli import build_parser as gdmcom_parser

    parser = gdmcom_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    link = sub.choices["link"]
    link.prog = "scripts/demo.sh"
    for action in link._actions:
        if action.dest in DEMO_DEFAULTS:
            action.required = False
            action.default = DEMO_DEFAULTS[action.dest]
            action.help = (action.help or "").split(" [default")[0] + " [default=%(default)r]"
    return parser


def main(argv=None) -> int:
    from .cli import main as gdmcom_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return gdmcom_main(["link"] + argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
