"""Write docs/flume-properties.md from rayflume's Flume mapping table and component configs.

    python scripts/gen_flume_docs.py           # (re)write the document
    python scripts/gen_flume_docs.py --check   # exit 1 if the committed document is stale
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rayflume.flume_conf.docs import render  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "flume-properties.md")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the document is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(DOC, encoding="utf-8") as f:
                current = f.read()
        except OSError:
            current = None
        if current != text:
            print(f"{DOC} is stale; run: python scripts/gen_flume_docs.py", file=sys.stderr)
            return 1
        print(f"{DOC} is up to date")
        return 0
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
