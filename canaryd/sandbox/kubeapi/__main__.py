"""`python -m canaryd.sandbox.kubeapi --crd FILE... [--kubeconfig OUT]`: serve until SIGTERM/SIGINT.

Prints the kubeconfig path (one line on stdout) once the server is listening, so a script can wait
for that line and then point kubectl or canaryd at it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from canaryd.sandbox.kubeapi.emulator import KubeApiEmulator, load_crds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canaryd.sandbox.kubeapi",
                                     description="Serve the Kubernetes API emulator on 127.0.0.1.")
    parser.add_argument("--crd", action="append", default=[], metavar="FILE",
                        help="YAML file with CustomResourceDefinitions (repeatable)")
    parser.add_argument("--kubeconfig", metavar="OUT", help="where to write the kubeconfig")
    parser.add_argument("--namespace", action="append", default=[], metavar="NS",
                        help="namespace to create at start (repeatable; default: default)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    args = parser.parse_args(argv)

    emulator = KubeApiEmulator(load_crds(args.crd), namespaces=args.namespace or ["default"], port=args.port)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    out = Path(args.kubeconfig) if args.kubeconfig else Path(tempfile.mkdtemp(prefix="kubeapi-")) / "kubeconfig"
    with emulator:
        path = emulator.write_kubeconfig(out)
        print(path, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
