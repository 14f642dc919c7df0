"""The coordinator's SuperLink: Flower's `flower-superlink`, with the Control and Runtime APIs
answering only the coordinator's own host.

    python -m cxrsynth.server.superlink [every flower-superlink flag]
    CXRSYNTH_CONTROL_ALLOW="127.0.0.1/32 ::1/128"   (the default: loopback only)

Flower 1.42 serves the Fleet API (what SuperNodes use), the Control API (`flwr run`, `flwr ls`,
`flwr supernode register`) and the Runtime API (the ServerApp's link) on one HTTPS port, and its
open-source build has no account authentication for the Control API. Whoever reaches that port
can register a SuperNode key and start an app of their own, so publishing the port to the
hospitals would publish the Control API with it. This launcher adds one ASGI middleware to
Flower's app: requests under /v1/control and /v1/runtime from a peer outside
CXRSYNTH_CONTROL_ALLOW are refused with 403 before Flower sees them; /v1/fleet and /health stay
open to every peer (SuperNode authentication and TLS still apply there).

The peer is the TCP peer: proxy headers (X-Forwarded-For) are not trusted, so no request can
claim the coordinator's address. Run `flwr` on the coordinator host itself (in Docker:
`docker compose exec superlink flwr ...`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys

ALLOW_ENV = "CXRSYNTH_CONTROL_ALLOW"
DEFAULT_ALLOW = "127.0.0.1/32 ::1/128"
GUARDED = ("/v1/control", "/v1/runtime")


def allowed_networks(spec: str | None = None) -> list:
    spec = os.environ.get(ALLOW_ENV, DEFAULT_ALLOW) if spec is None else spec
    try:
        return [ipaddress.ip_network(part, strict=False) for part in spec.replace(",", " ").split()]
    except ValueError as e:
        raise SystemExit(
            f"{ALLOW_ENV}={spec!r}: {e}; expected addresses or networks such as '127.0.0.1/32 10.0.0.5/32'."
        ) from None


class CoordinatorOnly:
    """ASGI middleware: the Control and Runtime APIs answer only peers in `networks`."""

    def __init__(self, app, networks: list | None = None):
        self.app = app
        self.networks = allowed_networks() if networks is None else networks

    def allows(self, host: str | None) -> bool:
        try:
            addr = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").startswith(GUARDED):
            host = (scope.get("client") or (None, None))[0]
            if not self.allows(host):
                body = json.dumps(
                    {
                        "detail": "the Control and Runtime APIs of this SuperLink answer only the coordinator's host "
                        f"({ALLOW_ENV}); a hospital reaches the Fleet API only."
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def install() -> None:
    """Add CoordinatorOnly, outermost, to the middleware of Flower's SuperLink app (idempotent)."""
    import flwr.superlink.extensions as ext
    from starlette.middleware import Middleware

    if getattr(ext.get_middleware, "_cxrsynth", False):
        return
    networks = allowed_networks()
    original = ext.get_middleware

    def get_middleware():
        return (Middleware(CoordinatorOnly, networks=networks), *original())

    get_middleware._cxrsynth = True
    ext.get_middleware = get_middleware
    # uvicorn would otherwise take the client address from X-Forwarded-For on loopback requests.
    os.environ["FORWARDED_ALLOW_IPS"] = ""


def main() -> int:
    install()
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv[0] = "flower-superlink"
    flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
