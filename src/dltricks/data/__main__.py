"""``python -m dltricks.data download {mnist,cifar10} [--root DIR]`` and ``python -m dltricks.data info``.

Downloads the official files (MD5-verified, written atomically) for machines that are online, and
shows where data sets are looked up and where the cache lives.
"""

from __future__ import annotations

import argparse
import os
import sys

from dltricks.data.files import cache_dir, data_roots, default_data_dirs
from dltricks.errors import DltricksError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dltricks.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="download a data set's official files")
    get.add_argument("dataset", choices=["mnist", "cifar10"])
    get.add_argument("--root", default=None,
                     help="destination folder (default: $DLTRICKS_CACHE/data[/mnist], searched by default)")
    commands.add_parser("info", help="show the data search path and the cache folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            if args.dataset == "mnist":
                from dltricks.data.mnist import download_mnist

                print(download_mnist(args.root))
            else:
                from dltricks.data.cifar import download_cifar10

                print(download_cifar10(args.root))
        else:
            print(f"DLTRICKS_DATA: {os.environ.get('DLTRICKS_DATA') or '(not set)'}")
            print("default folders: " + ", ".join(str(p) for p in default_data_dirs()))
            print("searched now: " + (", ".join(str(p) for p in data_roots()) or "(none exist)"))
            print(f"cache: {cache_dir()}")
    except DltricksError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
