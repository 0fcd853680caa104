"""`make run`: start `squall up`, deploy every folder of examples/, then stay in the foreground.

Ctrl-C (or SIGTERM) is passed on to the platform, which drains and stops gracefully.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--data-dir", default=".squall")
    args = ap.parse_args()
    squall = str(Path(sys.executable).parent / "squall")
    url = f"http://{args.host}:{args.port}"
    proc = subprocess.Popen([squall, "up", "--host", args.host, "--port", str(args.port),
                             "--data-dir", args.data_dir])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: proc.send_signal(s))
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                print("squall did not start", file=sys.stderr)
                proc.kill()
                return 1
            time.sleep(0.1)
    for example in sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir()):
        result = subprocess.run([squall, "--url", url, "--data-dir", args.data_dir, "deploy",
                                 str(example)],
                                env={**os.environ}, check=False)
        if result.returncode != 0:
            print(f"warning: could not deploy {example.name}", file=sys.stderr)
    print(f"\nSquall is up at {url} with the examples deployed. Try:\n"
          f"  curl {url}/fn/hello\n  {squall} --url {url} ls\n"
          f"Ctrl-C stops it.", flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
