"""A small client of the metrics stream: prints a line per processor for every view.

    python examples/metrics/client.py ws://127.0.0.1:9464/metrics/stream           # a run's
    python examples/metrics/client.py ws://SERVER:8750/api/v1/metrics/stream?flow=F \\
        --token "$ELASTICCODE_TOKEN"                                                 # a server's

``--views N`` stops after N views. Needs the ``websockets`` package (the server extra).
"""

from __future__ import annotations

import argparse
import json

from websockets.sync.client import connect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the stream's ws:// or wss:// URL")
    parser.add_argument("--token", help="a server's credential (a run's endpoint needs none)")
    parser.add_argument("--views", type=int, default=0, help="stop after this many views")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    seen = 0
    with connect(args.url, additional_headers=headers) as ws:
        for raw in ws:
            message = json.loads(raw)
            if message["type"] == "metrics-event":
                print(f"event {message['flow']}.{message['processor']}: {message['kind']}")
            if message["type"] != "metrics" or not message["interval"]:
                continue
            for name, p in message["processors"].items():
                process = p["process_ms"]
                print(
                    f"{message['flow']}.{name}: {p['rates']['in']:,.0f} in/s "
                    f"{p['rates']['out']:,.0f} out/s, p99 {process['p99'] or 0:.2f} ms, "
                    f"{p['instances']} instance(s), {p['status']}"
                )
            seen += 1
            if args.views and seen >= args.views:
                return


if __name__ == "__main__":
    main()
