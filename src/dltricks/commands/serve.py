"""``dltricks serve [--runs DIR] [--port P]``: runs, the evidence report and a model playground in a browser."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "serve", help="a local web app: runs, evidence report, model playground", formatter_class=formatter,
        description="Serve a web page with three tabs: Runs (table, overlaid curves, recipe differences), Evidence "
                    "(the report of `dltricks verify`, filterable by section and verdict) and Playground (draw or "
                    "upload a digit, upload an image or an EM slice, type a date, and see what a finished run's "
                    "model makes of it). Listens on 127.0.0.1 only unless --host says otherwise. See docs/serve.md.",
        epilog="examples:\n  dltricks serve\n  dltricks serve --runs experiments --evidence report --port 8080")
    p.add_argument("--runs", default="runs", metavar="DIR", help="folder holding run directories; only runs below "
                   "it can be opened")
    p.add_argument("--evidence", default="report", metavar="DIR",
                   help="folder of an evidence report (results.json, plots/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but a loopback address exposes the runs and the models to "
                        "the network")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=4.0, help="largest accepted upload, in MiB")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="largest accepted image, in decoded pixels (width x height)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dltricks.errors import ConfigError
    from dltricks.serve.app import LOOPBACK, ServerThread, create_app
    from dltricks.serve.predict import Limits

    if not Path(args.runs).is_dir():
        raise ConfigError(f"--runs {args.runs}: no such folder; expected the folder of your run directories "
                          "(`dltricks train --out`)")
    if args.max_upload_mb <= 0 or args.max_pixels < 1:
        raise ConfigError("--max-upload-mb and --max-pixels must be positive")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port}: expected 0 to 65535")
    loopback = args.host in LOOPBACK
    if not loopback:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can see the runs and run the "
              "models; there is no authentication", file=sys.stderr)
    limits = Limits(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    app = create_app(args.runs, evidence_dir=args.evidence, limits=limits,
                     trusted_hosts=LOOPBACK if loopback else None)
    server = ServerThread(app, host=args.host, port=args.port or None)
    # Ctrl-C may come at any moment once the thread runs, even before `start` returns: the server must be told
    # to exit in every case, or its thread pool's worker threads (not daemons) keep the process alive.
    try:
        server.start()
        print(f"dltricks serve: {server.url}/  (runs: {args.runs}, evidence: {args.evidence}; Ctrl-C stops)",
              file=sys.stderr, flush=True)
        server.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
