"""An async (trio) JSON-RPC client for bitcoind and the embedded regtest node.

Theory of operation
-------------------
Everything Chanhub knows about the chain comes through this one client: the hub,
the client SDK's watcher and the regtest harness all use it, so it follows
bitcoind's documented formats exactly and works unchanged against a real
`bitcoind -regtest` (or signet, testnet, mainnet).

- Transport: HTTP POST of a JSON-RPC 1.0 envelope (accepted by bitcoind 27 and
  later), HTTP Basic auth from a user/password pair or from bitcoind's cookie
  file. The cookie is re-read once when the server answers 401, because a
  restarted node writes a new one.
- Amounts: bitcoind speaks BTC as JSON decimals. Replies are parsed with
  `Decimal` so no float ever touches an amount, and Decimal parameters are sent
  as strings, which bitcoind's AmountFromValue accepts.
- Errors: an RPC-level error becomes `RpcError` carrying bitcoind's code and
  message (for example -26 with `non-BIP68-final`); a connection failure or
  timeout becomes `ChainUnavailable`; a refused credential becomes
  `RpcAuthError`. Callers branch on codes, never on message text, except where
  bitcoind gives only a reject reason.

Typed helpers cover the methods the project uses (docs/bitcoind-rpc-methods.md
lists them); `call()` reaches any other method.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from channel.chain.units import btc_to_sat, sat_to_btc

# bitcoind's RPC error codes the project branches on (src/rpc/protocol.h).
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_IN_WARMUP = -28
RPC_METHOD_NOT_FOUND = -32601


class ChainError(Exception):
    """Base of every error raised by the chain client."""


class ChainUnavailable(ChainError):
    """The node could not be reached, or did not answer in time."""


class RpcAuthError(ChainError):
    """The node refused our credentials (HTTP 401)."""


class RpcError(ChainError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


@dataclass(frozen=True)
class MempoolAcceptResult:
    """One entry of testmempoolaccept's answer."""

    txid: str
    wtxid: str
    allowed: bool
    reject_reason: str | None
    vsize: int | None
    fee_sat: int | None


@dataclass(frozen=True)
class TxOutInfo:
    """An unspent output as gettxout reports it."""

    value_sat: int
    confirmations: int
    script_pubkey: bytes
    coinbase: bool


class BitcoinRpc:
    """One connection pool to one node; use as an async context manager."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        cookie_file: Path | None = None,
        timeout_s: float | None = 30.0,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if username is None and cookie_file is None:
            raise ValueError("give username and password, or a cookie file")
        self.url = url
        self._username = username
        self._password = password
        self._cookie_file = cookie_file
        self._auth_header: str | None = None
        self._ids = itertools.count(1)
        # timeout_s=None waits as long as the node takes: tests under trio's
        # autojumping MockClock need that, since any deadline fires at once there.
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _authorization(self, *, reload: bool = False) -> str:
        if self._auth_header is None or reload:
            if self._username is not None and self._password is not None:
                credentials = f"{self._username}:{self._password}"
            else:
                assert self._cookie_file is not None
                try:
                    credentials = self._cookie_file.read_text().strip()
                except OSError as exc:
                    raise ChainUnavailable(f"cannot read cookie file: {exc}") from exc
            token = base64.b64encode(credentials.encode()).decode()
            self._auth_header = f"Basic {token}"
        return self._auth_header

    async def call(self, method: str, *params: Any) -> Any:
        """Call `method` with positional params; return its `result`."""
        body = json.dumps(
            {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)},
            default=_encode_decimal,
        )
        reply = await self._exchange(body, method)
        if not isinstance(reply, dict):
            raise ChainUnavailable(f"{method}: unexpected reply {reply!r}")
        error = reply.get("error")
        if error is not None:
            raise RpcError(method, int(error.get("code", 0)), str(error.get("message", "")))
        return reply.get("result")

    async def call_batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one HTTP request (a JSON-RPC batch, as bitcoind takes
        them). Returns one entry per call, in order: its result, or the
        `RpcError` it answered (returned, not raised, so one failure among many
        can be told apart)."""
        if not calls:
            return []
        first_id = next(self._ids)
        ids = [first_id + i for i in range(len(calls))]
        self._ids = itertools.count(first_id + len(calls))
        body = json.dumps(
            [
                {"jsonrpc": "1.0", "id": call_id, "method": method, "params": list(params)}
                for call_id, (method, params) in zip(ids, calls, strict=True)
            ],
            default=_encode_decimal,
        )
        label = f"batch of {len(calls)} ({calls[0][0]}...)"
        reply = await self._exchange(body, label)
        if not isinstance(reply, list):
            raise ChainUnavailable(f"{label}: unexpected reply {reply!r}")
        by_id = {entry.get("id"): entry for entry in reply if isinstance(entry, dict)}
        results: list[Any] = []
        for call_id, (method, _) in zip(ids, calls, strict=True):
            entry = by_id.get(call_id)
            if entry is None:
                raise ChainUnavailable(f"{label}: no answer for {method}")
            error = entry.get("error")
            if error is not None:
                results.append(
                    RpcError(method, int(error.get("code", 0)), str(error.get("message", "")))
                )
            else:
                results.append(entry.get("result"))
        return results

    async def _exchange(self, body: str, label: str) -> Any:
        response = await self._post(body, reload_cookie=False)
        if response.status_code == 401 and self._cookie_file is not None:
            response = await self._post(body, reload_cookie=True)
        if response.status_code == 401:
            raise RpcAuthError(f"{label}: the node refused our credentials")
        try:
            return json.loads(response.text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise ChainUnavailable(
                f"{label}: HTTP {response.status_code} with a body that is not JSON"
            ) from exc

    async def _post(self, body: str, *, reload_cookie: bool) -> httpx.Response:
        headers = {
            "Authorization": self._authorization(reload=reload_cookie),
            "Content-Type": "application/json",
        }
        try:
            return await self._http.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ChainUnavailable(f"timed out talking to {self.url}") from exc
        except httpx.HTTPError as exc:
            raise ChainUnavailable(f"cannot reach {self.url}: {exc}") from exc

    # -- blockchain ---------------------------------------------------------------

    async def getblockchaininfo(self) -> dict[str, Any]:
        return dict(await self.call("getblockchaininfo"))

    async def getblockcount(self) -> int:
        return int(await self.call("getblockcount"))

    async def getbestblockhash(self) -> str:
        return str(await self.call("getbestblockhash"))

    async def getblockhash(self, height: int) -> str:
        return str(await self.call("getblockhash", height))

    async def getblock(self, blockhash: str, verbosity: int = 1) -> Any:
        return await self.call("getblock", blockhash, verbosity)

    async def getblockheader_raw(self, blockhash: str) -> bytes:
        """The 80-byte header of any block the node knows (stale ones too)."""
        return bytes.fromhex(await self.call("getblockheader", blockhash, False))

    async def getrawblock(self, blockhash: str) -> bytes:
        return bytes.fromhex(await self.call("getblock", blockhash, 0))

    async def getrawtransaction(self, txid: str) -> bytes:
        return bytes.fromhex(await self.call("getrawtransaction", txid, False))

    async def getrawtransaction_verbose(self, txid: str) -> dict[str, Any]:
        return dict(await self.call("getrawtransaction", txid, True))

    async def gettxout(
        self, txid: str, vout: int, include_mempool: bool = True
    ) -> TxOutInfo | None:
        result = await self.call("gettxout", txid, vout, include_mempool)
        if result is None:
            return None
        return TxOutInfo(
            value_sat=btc_to_sat(result["value"]),
            confirmations=int(result["confirmations"]),
            script_pubkey=bytes.fromhex(result["scriptPubKey"]["hex"]),
            coinbase=bool(result["coinbase"]),
        )

    # -- mempool and broadcast ----------------------------------------------------

    async def sendrawtransaction(self, raw_tx: bytes) -> str:
        return str(await self.call("sendrawtransaction", raw_tx.hex()))

    async def testmempoolaccept(self, raw_txs: Sequence[bytes]) -> list[MempoolAcceptResult]:
        results = await self.call("testmempoolaccept", [raw.hex() for raw in raw_txs])
        return [
            MempoolAcceptResult(
                txid=entry["txid"],
                wtxid=entry["wtxid"],
                allowed=bool(entry.get("allowed", False)),
                reject_reason=entry.get("reject-reason"),
                vsize=entry.get("vsize"),
                fee_sat=btc_to_sat(entry["fees"]["base"]) if "fees" in entry else None,
            )
            for entry in results
        ]

    async def getrawmempool(self) -> list[str]:
        return [str(txid) for txid in await self.call("getrawmempool")]

    async def getmempoolentry(self, txid: str) -> dict[str, Any]:
        return dict(await self.call("getmempoolentry", txid))

    async def estimatesmartfee_sat_per_kvb(self, conf_target: int) -> int | None:
        """The node's fee estimate in sat per 1000 vbytes, or None when it has none."""
        result = await self.call("estimatesmartfee", conf_target)
        if "feerate" not in result:
            return None
        return btc_to_sat(result["feerate"])

    # -- mining (regtest) ---------------------------------------------------------

    async def generatetoaddress(self, nblocks: int, address: str) -> list[str]:
        return [str(h) for h in await self.call("generatetoaddress", nblocks, address)]

    async def invalidateblock(self, blockhash: str) -> None:
        await self.call("invalidateblock", blockhash)

    # -- wallet ---------------------------------------------------------------------

    async def getnewaddress(self) -> str:
        return str(await self.call("getnewaddress"))

    async def getbalance_sat(self) -> int:
        return btc_to_sat(await self.call("getbalance"))

    async def sendtoaddress(self, address: str, amount_sat: int) -> str:
        return str(await self.call("sendtoaddress", address, sat_to_btc(amount_sat)))

    async def listunspent(self, minconf: int = 1) -> list[dict[str, Any]]:
        return [dict(entry) for entry in await self.call("listunspent", minconf)]


def _encode_decimal(value: object) -> str:
    # bitcoind accepts amounts as strings as well as numbers; a string keeps the
    # exact decimal without ever going through float.
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"cannot send {type(value).__name__} over JSON-RPC")
