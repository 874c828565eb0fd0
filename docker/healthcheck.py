"""Container health check: exit 0 when the service's /healthz answers 200, 1 otherwise.

The images carry no curl; the interpreter that runs the service is already there.
The port comes from FUSIONSTREAM_METRICS_PORT, as the service reads it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = int(os.environ.get("FUSIONSTREAM_METRICS_PORT", "9108"))
    if port == 0:
        # The operator turned /metrics and /healthz off; reporting unhealthy forever would only hide real alarms.
        print("FUSIONSTREAM_METRICS_PORT=0: /healthz is off, nothing to check")
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as reply:
            print(reply.read().decode("utf-8", "replace"))
            return 0
    except urllib.error.HTTPError as exc:  # 503 with the service's reason in the body
        print(exc.read().decode("utf-8", "replace"))
    except OSError as exc:
        print(f"no answer on port {port}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
