"""Ray Serve application: N replicas, each owning one engine (one model, one device, --max-num-streams
slots), all behind Ray's HTTP proxy. Needs `ray[serve]`.

    serve run deploy/ray/serve.yaml
    serve run parakeet_streaming.deploy.ray_serve:build_app server_args="--model-size small --max-num-streams 64"

Each replica is the ASGI app of deploy/asgi.py over its own `ServerContext`: every WebSocket wire
protocol (by path, as on the websockets port), OpenAI's `POST /v1/audio/transcriptions` and the
probes. It names itself by its Serve replica id (`ModelInfo.instance`): in the native `hello`, in
Deepgram's closing `Metadata` and in the `x-parakeet-instance` response header. One WebSocket is one ongoing request
for Serve, for its whole life, so:
- `max_ongoing_requests` = slots + `overflow`: Serve never routes more connections to a replica than
  that; the `overflow` connections beyond the slots are answered by the replica's own admission with
  the protocol's `server_full` at once (Serve itself can only hold a WebSocket in its queue, or refuse
  the upgrade with an HTTP status, when every replica is at its limit).
- `LeastOngoingRouter` sends a new connection to the replica with the fewest open ones, so it reaches
  a free slot whenever any replica has one (Serve's default picks the lesser of two random replicas,
  which with 3 or more can be two full ones).
- autoscaling on `target_ongoing_requests` scales on open streams.
- a replica takes traffic only once its constructor returned: the model is loaded and the engine
  warmed up (the same readiness as /readyz); `check_health` reports a stopped or degraded engine.
- its Prometheus metrics go out through Ray's metrics export, tagged with the replica (ray_metrics.py).
docs/scaling.md has the measured behaviour (kill, drain, autoscaling) and the limits.
"""
from __future__ import annotations

import logging
import shlex
import time
from typing import Any, Sequence

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from parakeet_streaming.cli import build_parser, config_from_args
from parakeet_streaming.config import ServerConfig
from parakeet_streaming.deploy.asgi import asgi_app
from parakeet_streaming.deploy.ray_metrics import RayMetricsBridge
from parakeet_streaming.engine.threads import reserve_for_engine
from parakeet_streaming.server.app import build_engine, load
from parakeet_streaming.server.context import ModelInfo, ServerContext
from parakeet_streaming.server.security import Authenticator

log = logging.getLogger("parakeet_streaming.ray_serve")

DEPLOYMENT = "parakeet"
OVERFLOW = 4  # connections per replica beyond its slots that get `server_full` from the replica itself
WARM_UP_TIMEOUT = 600.0


def server_config(server_args: str | Sequence[str] = ()) -> ServerConfig:
    """The flags of `parakeet-server serve` (listener flags are ignored: Serve's proxy listens)."""
    args = shlex.split(server_args) if isinstance(server_args, str) else list(server_args)
    return config_from_args(build_parser().parse_args(["serve", *args]))


@serve.ingress()
class ParakeetReplica:
    """One Serve replica: one model and one engine; its ASGI app is built once they are ready."""

    def __init__(self, server_args: str | Sequence[str] = ()) -> None:
        config = server_config(server_args)
        threads = reserve_for_engine(config.threads)  # before the load: this thread stays off the engine's cores
        model = load(config)
        self.engine = build_engine(model, config, threads)
        self.engine.start()
        deadline = time.monotonic() + WARM_UP_TIMEOUT
        while self.engine.phase == "warming_up" and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.engine.phase != "ready":
            self.engine.shutdown()
            raise RuntimeError(f"engine did not warm up (phase {self.engine.phase}); Serve retries the replica")
        replica = serve.get_replica_context().replica_id.unique_id
        # every replica gets the same server_args: --instance-name can only prefix the replica id
        self.instance = f"{config.instance_name}-{replica}" if config.instance_name else replica
        self.ctx = ServerContext(self.engine, config, ModelInfo.of(model, self.instance),
                                 auth=Authenticator.from_config(config))
        self.ctx.metrics.watch(self.ctx)
        self._metrics = RayMetricsBridge(self.ctx.metrics.registry).start()
        log.info("replica %s ready: %d slots", self.instance, config.max_num_streams)

    def __serve_build_asgi_app__(self) -> Any:
        return asgi_app(self.ctx)

    def check_health(self) -> None:
        phase = self.engine.phase
        if phase != "ready":
            raise RuntimeError(f"engine {phase}")

    def __del__(self) -> None:
        # Serve calls this once the replica's open streams have ended (or kills the process at
        # graceful_shutdown_timeout_s first).
        if hasattr(self, "_metrics"):
            self._metrics.set()
        if hasattr(self, "engine"):
            self.engine.shutdown()


class LeastOngoingRouter(FIFOMixin, RequestRouter):
    """Every replica is a candidate; Serve's router takes the one with the fewest ongoing requests
    (its cached queue lengths, probed when stale) that is below max_ongoing_requests."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        return [candidate_replicas] if candidate_replicas else []


def deployment_options(config: ServerConfig, overflow: int = OVERFLOW) -> dict[str, Any]:
    return {
        "name": DEPLOYMENT,
        "max_ongoing_requests": config.max_num_streams + overflow,
        # The proxy holds at most this many WebSockets per deployment while every replica is at its
        # limit; beyond it the upgrade is refused (HTTP 500 for WebSockets in ray 2.60).
        "max_queued_requests": 1,
        # Open streams may finish for this long after a replica is told to stop (scale-down,
        # redeploy); then Serve kills it.
        "graceful_shutdown_timeout_s": config.drain_seconds,
        "request_router_config": RequestRouterConfig(request_router_class=LeastOngoingRouter),
    }


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for `serve run` / `serve deploy`: args `server_args` (the flags of
    `parakeet-server serve`, a string or a list) and `overflow`. Deployment options in a Serve config
    file (num_replicas, autoscaling_config, ray_actor_options, ...) override the defaults here."""
    server_args = args.get("server_args", ())
    config = server_config(server_args)
    options = deployment_options(config, int(args.get("overflow", OVERFLOW)))
    return serve.deployment(ParakeetReplica).options(**options).bind(server_args)
