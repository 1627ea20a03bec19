"""The reference platform process: Vs over HTTPS (Vd, Vm and Vr join in later issues)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from hss_pu.reference_platform.http import HttpServer, Request, Response, json_response
from hss_pu.reference_platform.pki import Pki, ensure_pki
from hss_pu.wire.vs import ServerAddr, encode_server_addr

__all__ = ["PlatformOptions", "ReferencePlatform"]

log = logging.getLogger("hss_pu.platform")

_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


@dataclass
class PlatformOptions:
    host: str = "127.0.0.1"
    vs_port: int = 0  # 0: any free port
    tls: bool = True
    state_dir: Path = field(default_factory=lambda: Path("platform-state"))
    # Added to the platform's clock in Vs replies: tests of the PU's time sync.
    clock_offset: float = 0.0
    vd_port: int = 0  # 0: any free port


class ReferencePlatform:
    def __init__(self, options: PlatformOptions) -> None:
        self.options = options
        self.pki: Pki | None = None
        self._vs: HttpServer | None = None
        self._vd: Server | None = None
        self.vs_port = 0
        self.vd_port = 0
        self.vs_requests: list[Request] = []

    @property
    def scheme(self) -> str:
        return "https" if self.options.tls else "http"

    @property
    def schedule_url(self) -> str:
        return f"{self.scheme}://{self.options.host}:{self.vs_port}"

    @property
    def ca_file(self) -> Path | None:
        return self.pki.ca_file if self.pki else None

    def now(self) -> float:
        return time.time() + self.options.clock_offset

    async def start(self) -> None:
        ctx = None
        if self.options.tls:
            self.pki = ensure_pki(self.options.state_dir / "pki")
            ctx = self.pki.server_context()
        self._vd = await serve(
            self._vd_session,
            self.options.host,
            self.options.vd_port,
            ssl=ctx,
            process_request=self._vd_handshake,
        )
        self.vd_port = int(next(iter(self._vd.sockets)).getsockname()[1])
        self._vs = HttpServer(self._handle_vs, ctx)
        self.vs_port = await self._vs.start(self.options.host, self.options.vs_port)
        log.info("Vs listening on %s, Vd on port %d", self.schedule_url, self.vd_port)

    async def close(self) -> None:
        if self._vs is not None:
            await self._vs.close()
            self._vs = None
        if self._vd is not None:
            self._vd.close()
            await self._vd.wait_closed()
            self._vd = None

    def _vd_handshake(self, conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        # The Vd session (login, RPCs) is the control-plane work; until it lands the
        # platform says so plainly instead of pretending to accept a login.
        return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Vd sessions are not served yet\n")

    async def _vd_session(self, conn: ServerConnection) -> None:
        await conn.close(1013, "not served yet")

    async def _handle_vs(self, req: Request) -> Response:
        self.vs_requests.append(req)
        if len(self.vs_requests) > 1000:
            del self.vs_requests[:500]
        if req.path != "/Vs/getServerAddr":
            return json_response(404, b'{"info": "no such endpoint"}')
        if req.method != "GET":
            return json_response(405, b'{"info": "GET only"}')
        mac = req.query.get("macid", "")
        if not _MAC.match(mac):
            return json_response(400, b'{"info": "macid missing or malformed"}')
        if req.headers.get("mac-identity", "").lower() != mac.lower():
            return json_response(400, b'{"info": "Mac-Identity header missing or not macid"}')
        vd_port = self.vd_port
        addr = ServerAddr(
            pass_domain=self.options.host,
            pass_port=0 if self.options.tls else vd_port,
            secure_pass_port=vd_port if self.options.tls else 0,
            platform_time=self.now(),
        )
        log.info("Vs: scheduled %s to Vd port %d", mac, vd_port)
        return json_response(200, encode_server_addr(addr))
