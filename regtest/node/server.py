"""bitcoind-compatible JSON-RPC over HTTP: transport, auth, envelopes, batches.

Follows shared/reference/bitcoind-rpc.md §1 (v28 behaviour): POST only on
`/` or `/wallet/<name>` (404 for other paths, 405 for other verbs), HTTP
Basic auth on every request (401 + `WWW-Authenticate: Basic realm="jsonrpc"`),
legacy envelopes (`result` and `error` both present; HTTP 500 for an RPC
error, 404 for -32601, 400 for -32600) and JSON-RPC 2.0 envelopes (always
200, 204 for notifications), batches always 200.

A stdlib ThreadingHTTPServer runs in a background thread; the node's own
lock serializes the calls.  Without explicit credentials a cookie file
`<datadir>/regtest/.cookie` (`__cookie__:<64 hex>`, mode 0600, written via
tmp+rename) is created at start and deleted at stop, as bitcoind does.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from regtest.node.errors import (
    RPC_INVALID_REQUEST,
    RPC_METHOD_NOT_FOUND,
    RPC_MISC_ERROR,
    RPC_PARSE_ERROR,
    NodeRpcError,
)
from regtest.node.node import Node
from regtest.node.wallet import write_private_file

_NO_ID = object()


def to_json(value: Any) -> str:
    """JSON text with Decimals as plain numbers (8 places stay 8 places)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".16g") if value == value else "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class _Reply:
    def __init__(self, status: int, body: str | None) -> None:
        self.status = status
        self.body = body


class RpcServer:
    """Serves `node` over HTTP in a background thread."""

    def __init__(
        self,
        node: Node,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.node = node
        self.host = host
        self._requested_port = port
        self.cookie_path: Path = node.netdir / ".cookie"
        self._auth = auth
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def credentials(self) -> tuple[str, str]:
        assert self._auth is not None, "server not started"
        return self._auth

    def start(self) -> None:
        if self._auth is None:
            cookie = secrets.token_hex(32)
            write_private_file(self.cookie_path, f"__cookie__:{cookie}".encode())
            self._auth = ("__cookie__", cookie)
            self._owns_cookie = True
        else:
            self._owns_cookie = False
        user, password = self._auth
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        server = self

        class Handler(_Handler):
            rpc_server = server
            authorization = expected

        self._httpd = ThreadingHTTPServer((self.host, self._requested_port), Handler)
        self._httpd.daemon_threads = True
        # a short poll interval keeps stop() fast (tests start and stop many servers)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="regtest-rpc", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if getattr(self, "_owns_cookie", False):
            self.cookie_path.unlink(missing_ok=True)

    # --- request handling (called from handler threads) -----------------------------
    def handle_body(self, body: bytes) -> _Reply:
        try:
            request = json.loads(body, parse_float=Decimal)
        except ValueError:
            return _Reply(
                500,
                _envelope_legacy(None, _err(RPC_PARSE_ERROR, "Parse error"), _NO_ID, null_id=True),
            )
        if isinstance(request, list):
            replies = [self._one(item) for item in request]
            kept = [r for r in replies if r[1] is not None]
            if request and not kept:
                return _Reply(204, None)
            return _Reply(200, "[" + ",".join(str(r[1]) for r in kept) + "]")
        if not isinstance(request, dict):
            return _Reply(
                500,
                _envelope_legacy(
                    None,
                    _err(RPC_PARSE_ERROR, "Top-level object parse error"),
                    _NO_ID,
                    null_id=True,
                ),
            )
        status, text = self._one(request)
        if text is None:
            return _Reply(204, None)
        return _Reply(status, text)

    def _one(self, request: Any) -> tuple[int, str | None]:
        """Run one request object; returns (HTTP status if alone, reply text or None)."""
        if not isinstance(request, dict):
            return 200, _envelope_legacy(
                None, _err(RPC_INVALID_REQUEST, "Invalid Request object"), _NO_ID, null_id=True
            )
        request_id = request.get("id", _NO_ID)
        version = request.get("jsonrpc")
        is_v2 = False
        error: dict[str, Any] | None = None
        result: Any = None
        if version is not None and not isinstance(version, str):
            error = _err(RPC_INVALID_REQUEST, "jsonrpc field must be a string")
        elif version == "2.0":
            is_v2 = True
        elif version not in (None, "1.0"):
            error = _err(RPC_INVALID_REQUEST, "JSON-RPC version not supported")
        if error is None:
            method = request.get("method")
            params = request.get("params")
            if method is None:
                error = _err(RPC_INVALID_REQUEST, "Missing method")
            elif not isinstance(method, str):
                error = _err(RPC_INVALID_REQUEST, "Method must be a string")
            elif params is not None and not isinstance(params, (list, dict)):
                error = _err(RPC_INVALID_REQUEST, "Params must be an array or object")
            else:
                try:
                    result = self.node.call_named(method, params if params is not None else [])
                except NodeRpcError as exc:
                    error = _err(exc.code, exc.message)
                except Exception as exc:  # Core: any other exception is -1 with its text
                    error = _err(RPC_MISC_ERROR, str(exc))
        if is_v2:
            if request_id is _NO_ID:
                return 204, None
            body: dict[str, Any] = {"jsonrpc": "2.0"}
            if error is None:
                body["result"] = result
            else:
                body["error"] = error
            body["id"] = request_id
            return 200, to_json(body)
        status = 200
        if error is not None:
            code = error["code"]
            status = (
                400
                if code == RPC_INVALID_REQUEST
                else 404
                if (code == RPC_METHOD_NOT_FOUND)
                else 500
            )
        return status, _envelope_legacy(result, error, request_id)


def _err(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def _envelope_legacy(
    result: Any, error: dict[str, Any] | None, request_id: Any, *, null_id: bool = False
) -> str:
    body: dict[str, Any] = {"result": None if error else result, "error": error}
    if request_id is not _NO_ID:
        body["id"] = request_id
    elif null_id:
        body["id"] = None
    return to_json(body)


class _Handler(BaseHTTPRequestHandler):
    rpc_server: RpcServer
    authorization: str
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes; with Nagle on, the body
    # waits for the client's delayed ACK of the headers: 40 ms per call here
    # (10 blocks/s followed instead of 109).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests and the foreground process print nothing per request

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        return hmac.compare_digest(header.encode(), self.authorization.encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length)
        if self.path != "/" and not self.path.startswith("/wallet/"):
            self._send(404, b"")
            return
        if not self._authorized():
            self._send(401, b"", extra={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
            return
        reply = self.rpc_server.handle_body(body)
        if reply.body is None:
            self._send(reply.status, b"")
        else:
            self._send(reply.status, (reply.body + "\n").encode(), "application/json")

    def _not_post(self) -> None:
        self._send(405, b"JSONRPC server handles only POST requests")

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_post
