"""bitcoind's JSON-RPC methods over a `Node`: parameters in, bitcoind's result out.

`RpcMethods.dispatch(method, params)` is the single entry: it maps named
parameters onto positions (Core's transformNamedArguments), refuses unknown
methods (-32601), a wrong number of arguments (-1 with the method's help
text) and arguments of the wrong JSON type (-3 `Wrong type passed:...`),
both from the method's declaration in `rpc_help`, and calls the handler.
Handlers raise `NodeRpcError` with bitcoind's code and text; results use
Decimal for BTC amounts.  The node's lock is held by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from regtest.node.errors import (
    RPC_INVALID_PARAMETER,
    RPC_METHOD_NOT_FOUND,
    RPC_MISC_ERROR,
    RPC_TYPE_ERROR,
    NodeRpcError,
)
from regtest.node.rpc_help import HELP, command_list

if TYPE_CHECKING:
    from regtest.node.node import Node

Handler = Callable[..., Any]

_JSON_TYPE = {
    bool: "bool",
    int: "number",
    float: "number",
    Decimal: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def json_type(value: Any) -> str:
    return _JSON_TYPE.get(type(value), "object")


def expect(value: Any, *types: str) -> Any:
    """Core's type check inside a handler: -3 `JSON value of type X is not ...`."""
    got = json_type(value)
    if got not in types:
        raise NodeRpcError(
            RPC_TYPE_ERROR, f"JSON value of type {got} is not of expected type {types[0]}"
        )
    return value


def parse_hash(value: Any, name: str) -> bytes:
    """Core's ParseHashV: -8 on wrong length or non-hex."""
    expect(value, "string")
    if len(value) != 64:
        raise NodeRpcError(
            RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')"
        )
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise NodeRpcError(
            RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')"
        ) from None


class RpcMethods:
    def __init__(self, node: Node) -> None:
        from regtest.node import rpc_chain, rpc_tx, rpc_wallet

        self.node = node
        self.table: dict[str, tuple[Handler, list[str]]] = {}
        for module in (rpc_chain, rpc_tx, rpc_wallet):
            for name, (handler, arg_names) in module.METHODS.items():
                self.table[name] = (handler, arg_names)
        self.table["help"] = (self._help, ["command"])
        for name, (_, arg_names) in self.table.items():
            declared = [arg.name for arg in HELP[name].args]
            assert declared == arg_names, f"{name}: help declares {declared}, handler {arg_names}"

    def _help(self, node: Node, command: str | None = None) -> str:
        if command is None:
            return command_list()
        if command not in self.table:
            return f"help: unknown command: {command}"
        return self.usage(command)

    def usage(self, method: str) -> str:
        """The method's help text (what Core answers to a wrong argument count)."""
        return HELP[method].text(method)

    def dispatch(self, method: str, params: list[Any] | dict[str, Any]) -> Any:
        entry = self.table.get(method)
        if entry is None:
            raise NodeRpcError(RPC_METHOD_NOT_FOUND, "Method not found")
        handler, arg_names = entry
        if isinstance(params, dict):
            params = self._positional(params, arg_names)
        # Core treats trailing JSON nulls as omitted arguments
        while params and params[-1] is None:
            params = params[:-1]
        declaration = HELP[method]
        if not declaration.num_args_valid(len(params)):
            raise NodeRpcError(RPC_MISC_ERROR, self.usage(method))
        mismatch = declaration.type_errors(params)
        if mismatch is not None:
            raise NodeRpcError(RPC_TYPE_ERROR, mismatch)
        args = {arg_names[i]: value for i, value in enumerate(params) if value is not None}
        return handler(self.node, **args)

    @staticmethod
    def _positional(named: dict[str, Any], arg_names: list[str]) -> list[Any]:
        named = dict(named)
        positional: list[Any] = list(named.pop("args", []) or [])
        for name in named:
            if name not in arg_names:
                raise NodeRpcError(RPC_INVALID_PARAMETER, f"Unknown named parameter {name}")
        for i, name in enumerate(arg_names):
            if name not in named:
                continue
            if i < len(positional):
                raise NodeRpcError(
                    RPC_INVALID_PARAMETER,
                    f"Parameter {name} specified twice both as positional and named argument",
                )
            positional.extend([None] * (i - len(positional)))
            positional.append(named[name])
        return positional
