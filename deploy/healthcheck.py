"""Container health probe: exit 0 when ``/readyz`` answers 200, 1 otherwise.

WHY a script and not curl: the slim and CUDA runtime bases ship no curl/wget, and installing one only
for the probe grows the image. The image's Python is always there; this uses the stdlib only and reads
the same ``LSTM_SERVE_PORT`` the service listens on, so changing the port cannot break the probe.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    port = os.environ.get("LSTM_SERVE_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    ok = probe(url, timeout_s=3.0)
    if not ok:
        print(f"not ready: {url}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
