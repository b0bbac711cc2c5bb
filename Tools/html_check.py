#!/usr/bin/env python3
"""Look at an exported html catalog (saelabel export --format html) in headless Chromium.

    html_check.py dump CATALOG_DIR [--view 'feature=3']          print the rendered DOM
    html_check.py screenshot CATALOG_DIR OUT.png [--view ...]     save a PNG (1280x900 by default)
    html_check.py check CATALOG_DIR                               smoke test: index and first feature render,
                                                                  no injected element or handler (exit 1 if not)

`--view` is the URL fragment the page understands: q=TEXT, min=0.5, status=scored, sort=simulation,
dir=desc, page=2, feature=N. Needs Debian's `chromium` package on PATH.
"""
import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("chromium is not on PATH (Debian: apt-get install -y chromium)")


def run(catalog, view, extra):
    url = pathlib.Path(catalog, "index.html").resolve().as_uri() + ("#" + view if view else "")
    with tempfile.TemporaryDirectory() as profile:
        args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url]
        return subprocess.run(args, capture_output=True, text=True, timeout=120).stdout


def dump(catalog, view=""):
    return run(catalog, view, ["--dump-dom"])


def check(catalog):
    problems = []
    index = dump(catalog)
    if 'data-view="index"' not in index:
        problems.append("index did not render")
    rows = re.findall(r'<tr data-feature="(\d+)"', index)
    print(f"index: {len(rows)} rows on the first page")
    if rows:
        feature = dump(catalog, f"feature={rows[0]}")
        spans = feature.count('<span class="tok"')
        print(f"feature {rows[0]}: {spans} shaded token spans")
        if 'data-view="feature"' not in feature:
            problems.append(f"feature {rows[0]} did not render")
        index += feature
    if 'data-pwned="' in index or "<img" in index:
        problems.append("injected markup found in the DOM")
    for problem in problems:
        print("FAIL:", problem)
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dump"); p.add_argument("catalog"); p.add_argument("--view", default="")
    p = sub.add_parser("screenshot"); p.add_argument("catalog"); p.add_argument("out")
    p.add_argument("--view", default=""); p.add_argument("--size", default="1280,900")
    p = sub.add_parser("check"); p.add_argument("catalog")
    args = parser.parse_args()
    if args.command == "dump":
        sys.stdout.write(dump(args.catalog, args.view))
    elif args.command == "screenshot":
        out = os.path.abspath(args.out)
        run(args.catalog, args.view, [f"--screenshot={out}", f"--window-size={args.size}", "--hide-scrollbars"])
        if not os.path.exists(out):
            sys.exit(f"no screenshot written to {out}")
        print(out)
    else:
        sys.exit(check(args.catalog))


if __name__ == "__main__":
    main()
