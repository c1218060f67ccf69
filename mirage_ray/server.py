"""The HTTP + WebSocket front door (Starlette): web client, health, readiness, stats, page token, ``/ws``.

Built by the Serve ingress deployment (actors/ingress.py) with Ray-backed stages, or in-process by tests with
:class:`~mirage_ray.stages.LocalStages`. No Ray import here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from mirage_ray import protocol
from mirage_ray.admission import AdmissionGate, LocalAdmission
from mirage_ray.config import LOOPBACK_HOSTS, MirageSettings
from mirage_ray.metrics import MetricsSink, SessionSummary, aggregate
from mirage_ray.protocol import CloseCode
from mirage_ray.security import AuthError, AuthSetup, ConnectionLimiter, TokenBucket, origin_allowed
from mirage_ray.session import Session
from mirage_ray.stages import StageInfo, Stages, Workers
from mirage_ray.transport import Connection, ControllerPush

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
PAGE_TOKEN_SUBJECT = "local-page"
MAX_CLOSE_REASON_CHARS = 120  # a WebSocket close reason holds at most 123 bytes
DRAIN_TIMEOUT_S = 5.0  # a session being shut down answers its received audio within this, then closes
SHUTDOWN_REASON = "server shutting down; reconnect in a few seconds"


@dataclass
class ServerContext:
    """Everything the front door needs, injected."""

    settings: MirageSettings
    auth: AuthSetup
    stages: Stages
    info: StageInfo
    readiness: Callable[[], Awaitable[dict[str, Any]]]
    controller_push: ControllerPush | None = None
    metrics_sink: MetricsSink | None = None
    workers: Workers | None = None  # the replica's thread pools (built from settings when not given)
    admission: AdmissionGate | None = None  # the application-wide gate; a replica-local one when not given
    sessions: dict[str, Session] = field(default_factory=dict)
    connections: dict[str, Connection] = field(default_factory=dict)  # the live sessions' sockets, by session id
    draining: bool = False  # shutting down: new sessions are refused with 1001
    totals: dict[str, int] = field(default_factory=lambda: {"sessions_started": 0, "sessions_refused": 0})

    def __post_init__(self) -> None:
        if self.workers is None:
            self.workers = Workers.from_settings(self.settings)
        if self.admission is None:
            self.admission = LocalAdmission(
                self.settings.max_sessions, self.summaries, live_load=self.settings.admission_live_load
            )

    async def shutdown(
        self, code: int = CloseCode.GOING_AWAY, reason: str = SHUTDOWN_REASON, timeout_s: float = DRAIN_TIMEOUT_S
    ) -> None:
        """Refuse new sessions and close every live one with ``code`` once it has answered the audio it received
        and flushed its sends (each within ``timeout_s``, all at once)."""
        self.draining = True
        closed: set[str] = set()
        # a session admitted just before draining began registers a moment later: take it in the next round
        while live := {sid: c for sid, c in self.connections.items() if sid not in closed}:
            logger.info("shutting down: closing %d session(s) with %d", len(live), code)
            closed |= set(live)
            await asyncio.gather(*(connection.shutdown(code, reason, timeout_s) for connection in live.values()))

    def summaries(self) -> list[SessionSummary]:
        """The latest summary of every live session of this replica."""
        return [s.last_summary for s in self.sessions.values() if s.last_summary is not None]


def build_app(ctx: ServerContext) -> Starlette:
    """The Starlette application for one ingress replica."""
    connections = TokenBucket(ctx.settings.max_connections_per_s, ctx.settings.connection_burst)
    limits = ConnectionLimiter.from_settings(ctx.settings)
    gate: AdmissionGate = ctx.admission or LocalAdmission(ctx.settings.max_sessions, ctx.summaries)

    async def index(_: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html")

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        report = await ctx.readiness()
        ready = all(stage.get("ready", False) for stage in report.values())
        return JSONResponse({"ready": ready, "stages": report}, status_code=200 if ready else 503)

    async def stats(_: Request) -> Response:
        live = list(ctx.sessions.values())
        return JSONResponse(
            {
                "sessions": len(live),
                "capacity": ctx.settings.sessions_per_replica,
                "admission": await gate.load(),
                "totals": ctx.totals,
                "aggregate": aggregate(ctx.summaries()),
                "per_session": {s.id: s.stats_snapshot() for s in live},  # leaves the sessions' fps windows
                "backends": dict(ctx.info.report),
            }
        )

    async def page_token(request: Request) -> Response:
        client = request.client.host if request.client else None
        if not ctx.auth.auto_secret or ctx.auth.issuer is None or client not in LOOPBACK_HOSTS:
            return JSONResponse({"error": "no page token: use a token from your administrator"}, status_code=404)
        ttl = ctx.settings.page_token_ttl_s
        return JSONResponse({"token": ctx.auth.issuer.issue(PAGE_TOKEN_SUBJECT, ttl), "expires_in": ttl})

    async def websocket_endpoint(websocket: WebSocket) -> None:
        offered = list(websocket.scope.get("subprotocols") or [])
        subprotocol = protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None

        async def refuse(code: int, reason: str) -> None:
            ctx.totals["sessions_refused"] += 1
            logger.info("refused a WebSocket: %d %s", code, reason)
            await websocket.accept(subprotocol=subprotocol)
            await websocket.close(code, reason)

        if ctx.draining:
            await refuse(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
            return
        if not origin_allowed(websocket.headers.get("origin"), ctx.settings.allowed_origins):
            await refuse(CloseCode.POLICY, "origin not allowed")
            return
        # per address before the replica-wide bucket: one flooding address must not spend everyone's tokens
        client_address = websocket.client.host if websocket.client else None
        if (refused := limits.check_address(client_address, time.monotonic())) is not None:
            await refuse(CloseCode.RATE_LIMITED, refused)
            return
        if not connections.allow(time.monotonic()):
            await refuse(CloseCode.RATE_LIMITED, "connection rate limit exceeded")
            return
        token = protocol.bearer_from_subprotocols(offered) or websocket.query_params.get("token")
        try:
            principal = ctx.auth.verifier.verify(token)
        except AuthError as exc:
            await refuse(CloseCode.POLICY, f"authentication failed: {exc}")
            return
        if (refused := limits.check_subject(principal.subject, time.monotonic())) is not None:
            await refuse(CloseCode.RATE_LIMITED, refused)
            return
        if len(ctx.sessions) >= ctx.settings.sessions_per_replica:
            await refuse(CloseCode.TRY_AGAIN, "server full (this replica); retry in 30 s")
            return
        session_id = uuid.uuid4().hex[:12]
        verdict = await gate.admit(session_id)
        if not verdict.admitted:
            await refuse(CloseCode.TRY_AGAIN, verdict.reason[:MAX_CLOSE_REASON_CHARS])
            return
        await websocket.accept(subprotocol=subprotocol)
        session = Session(ctx.settings, ctx.stages, ctx.info, ctx.workers, session_id, sink=ctx.metrics_sink)
        ctx.sessions[session.id] = session
        ctx.totals["sessions_started"] += 1
        logger.info("session %s started for %s", session.id, principal.subject)
        limits.session_started(principal.subject)
        connection: Connection | None = None
        try:
            connection = ctx.connections[session.id] = Connection(
                websocket, session, principal.expires_at, ctx.controller_push
            )
            await connection.run()
        except Exception:
            logger.exception("session %s: internal error", session.id)
            try:
                await websocket.close(CloseCode.INTERNAL, "internal error")
            except Exception:  # already closed
                logger.debug("session %s: socket already closed", session.id)
        finally:
            limits.session_ended(principal.subject)
            closed = connection.closed_by_server if connection is not None else None
            if closed is not None and closed[0] == CloseCode.RATE_LIMITED:  # a flood: no fresh allowance on reconnect
                limits.flooded(client_address, principal.subject, time.monotonic())
            ctx.sessions.pop(session.id, None)
            ctx.connections.pop(session.id, None)
            await gate.release(session.id)
            logger.info("session %s ended", session.id)

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/v1/stats", stats),
        Route("/v1/page-token", page_token),
        WebSocketRoute("/ws", websocket_endpoint),
        Mount("/web", app=StaticFiles(directory=WEB_DIR), name="web"),
    ]
    return Starlette(routes=routes)
