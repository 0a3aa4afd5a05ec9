"""The node's two error types and the bitcoind error codes they carry.

`TxRejected` is a validation state (Core's TxValidationState): a reject
reason, an optional debug text, and whether the failure was "missing inputs",
which the RPC layer maps to -25 rather than -26.  `NodeRpcError` is what a
JSON-RPC call raises: bitcoind's numeric code and message, exactly.
"""

from __future__ import annotations

# src/rpc/protocol.h
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_WALLET_ERROR = -4
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_WALLET_INSUFFICIENT_FUNDS = -6
RPC_INVALID_PARAMETER = -8
RPC_DATABASE_ERROR = -20
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_UTXO_SET = -27
RPC_METHOD_DEPRECATED = -32
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_INTERNAL_ERROR = -32603
RPC_PARSE_ERROR = -32700


class NodeRpcError(Exception):
    """A JSON-RPC error as bitcoind reports it: `code` and `message`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class TxRejected(Exception):
    """A transaction (or block) failed validation.

    `reason` is Core's reject reason, `debug` its optional debug message;
    `missing_inputs` marks TX_MISSING_INPUTS, which sendrawtransaction
    reports as -25 and testmempoolaccept as "missing-inputs".  A script
    failure also carries `script_error`, Core's ScriptError_t name for it
    (e.g. "EVAL_FALSE"), and the failing `input_index`.
    """

    def __init__(
        self,
        reason: str,
        debug: str = "",
        *,
        missing_inputs: bool = False,
        script_error: str | None = None,
        input_index: int | None = None,
    ) -> None:
        super().__init__(reason, debug)
        self.reason = reason
        self.debug = debug
        self.missing_inputs = missing_inputs
        self.script_error = script_error
        self.input_index = input_index

    @property
    def text(self) -> str:
        """Core's ValidationState::ToString: `reason` or `reason, debug`."""
        return f"{self.reason}, {self.debug}" if self.debug else self.reason

    def __str__(self) -> str:
        return self.text
