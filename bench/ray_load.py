"""Streams through Ray Serve's proxy vs straight to one server (bench/load.py's clients and figures).

    python bench/ray_load.py --server-flags "--model-size small --load-format dummy" --streams 1,8,16 --replicas 1,2
    python bench/ray_load.py --address auto --proxy-url ws://HEAD:8000 ...   # an existing Ray cluster

For each setup (one plain `parakeet-server serve`, then Serve with each replica count) and each
stream count: p50/p95 lag of every result (wall time since the stream's first audio minus the audio
it covers) and of the final result, and failures. The per-stream overhead of the proxy is the
difference between the rows at the same stream count. Without --address a local Ray cluster is started
on 127.0.0.1 only; client, proxy and replicas then share this machine's cores, so the figures are of
the whole set-up, not of the proxy alone. Needs `ray[serve]`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local cluster stays on 127.0.0.1

from load import free_port, pct, run_level, start_server  # noqa: E402

from parakeet_streaming.model.loader import pseudo_speech  # noqa: E402


def report(setup: str, n: int, results: list) -> None:
    ok = [r for r in results if r.error is None]
    lags = [x for r in ok for x in r.lags]
    finals = [r.final_latency for r in ok if r.final_latency is not None]
    print(f"{setup:>14}{n:>8}{pct(lags, 50):>8.0f}ms{pct(lags, 95):>8.0f}ms{pct(finals, 50):>9.0f}ms"
          f"{pct(finals, 95):>9.0f}ms{len(results) - len(ok):>8}", flush=True)
    for r in results:
        if r.error:
            print(f"#   failure: {r.error}")


def run_levels(setup: str, url: str, levels: list[int], audio, packet_ms: int) -> None:
    for n in levels:
        report(setup, n, asyncio.run(run_level(url, n, audio, packet_ms)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-flags", default="--model-size small --load-format dummy",
                    help="flags of `parakeet-server serve`, for the plain server and every replica")
    ap.add_argument("--streams", default="1,8,16")
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--packet-ms", type=int, default=80)
    ap.add_argument("--num-cpus", type=float, default=0, help="CPUs Ray reserves per replica")
    ap.add_argument("--num-gpus", type=float, default=0, help="GPUs per replica (add --device cuda to the flags)")
    ap.add_argument("--address", help="an existing Ray cluster (`auto`, or its GCS address); default: a local one")
    ap.add_argument("--proxy-url", help="the Serve proxy's WebSocket URL on an existing cluster")
    ap.add_argument("--skip-direct", action="store_true", help="no plain-server rows")
    args = ap.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    audio = pseudo_speech(args.seconds, seed=3)
    flags = f"{args.server_flags} --max-num-streams {max(levels)}"
    print(f"{'setup':>14}{'streams':>8}{'p50 lag':>10}{'p95 lag':>10}{'p50 final':>11}{'p95 final':>11}{'failed':>8}")
    if not args.skip_direct:
        proc, url, _ = start_server(flags, max(levels))
        try:
            run_levels("direct", url, levels, audio, args.packet_ms)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    import ray
    from ray import serve

    from parakeet_streaming.deploy.ray_serve import ParakeetReplica, deployment_options, server_config

    if args.address:
        ray.init(address=args.address)
        url = args.proxy_url or "ws://127.0.0.1:8000"
    else:
        port = free_port()
        ray.init(include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"ws://127.0.0.1:{port}"
    try:
        for replicas in [int(r) for r in args.replicas.split(",")]:
            options = deployment_options(server_config(flags)) | {
                "num_replicas": replicas, "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}}
            started = time.perf_counter()
            serve.run(serve.deployment(ParakeetReplica).options(**options).bind(flags), name="parakeet-bench",
                      route_prefix="/")
            print(f"# {replicas} replica(s) ready in {time.perf_counter() - started:.1f} s")
            run_levels(f"ray x{replicas}", url, levels, audio, args.packet_ms)
            serve.delete("parakeet-bench")
    finally:
        if not args.address:
            serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
