"""Argument errors as Core's RPCHelpMan gives them: wrong types, wrong counts, help."""

from __future__ import annotations

import pytest

from regtest.node import Node, NodeRpcError, RpcServer
from regtest.node.rpc_help import HELP
from tests.regtest.test_rpc import error_of

GETBLOCKHASH_HELP = (
    "getblockhash height\n"
    "\n"
    "Returns hash of block in best-block-chain at height provided.\n"
    "\n"
    "Arguments:\n"
    "1. height    (numeric, required) The height index\n"
)


def error(node: Node, method: str, *params: object) -> tuple[int, str]:
    with pytest.raises(NodeRpcError) as info:
        node.call(method, *params)
    return info.value.code, info.value.message


def test_wrong_type_is_cores_full_message(regtest_node: Node) -> None:
    assert error(regtest_node, "getblockhash", "1") == (
        -3,
        'Wrong type passed:\n{\n    "Position 1 (height)": "JSON value of type string is not '
        'of expected type number"\n}',
    )
    # every mismatch is listed, in position order
    assert error(regtest_node, "gettxout", 5, "0", "yes") == (
        -3,
        "Wrong type passed:\n{\n"
        '    "Position 1 (txid)": "JSON value of type number is not of expected type string",\n'
        '    "Position 2 (n)": "JSON value of type string is not of expected type number",\n'
        '    "Position 3 (include_mempool)": "JSON value of type string is not of expected '
        'type bool"\n}',
    )
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call_named("getblockhash", {"height": True})
    assert info.value.code == -3 and '"Position 1 (height)"' in info.value.message


def test_type_checks_leave_amounts_nulls_and_skipped_arguments_alone(regtest_node: Node) -> None:
    address = regtest_node.call("getnewaddress")
    assert len(regtest_node.call("sendtoaddress", address, "0.1")) == 64  # amount as a string
    assert len(regtest_node.call("sendtoaddress", address, 0.1, None, None)) == 64
    tip = regtest_node.call("getbestblockhash")
    assert regtest_node.call("getblock", tip, True)["hash"] == tip  # verbosity: Core skips
    assert error(regtest_node, "sendtoaddress", address, True)[0] == -3  # checked by handler


def test_wrong_argument_count_answers_the_help_text(regtest_node: Node) -> None:
    assert regtest_node.call("help", "getblockhash") == GETBLOCKHASH_HELP
    assert error(regtest_node, "getblockhash") == (-1, GETBLOCKHASH_HELP)
    assert error(regtest_node, "getblockhash", 1, 2) == (-1, GETBLOCKHASH_HELP)
    assert error(regtest_node, "getblockcount", 1) == (
        -1,
        "getblockcount\n\nReturns the height of the most-work fully-validated chain.\n"
        "The genesis block has height 0.\n",
    )
    text = regtest_node.call("help", "sendrawtransaction")
    assert text.startswith('sendrawtransaction "hexstring" ( maxfeerate maxburnamount )\n\n')
    assert "\n2. maxfeerate       (numeric or string, optional, default=\"0.10\") " in text


def test_help_lists_every_method_by_category(regtest_node: Node) -> None:
    listing = regtest_node.call("help")
    assert listing.startswith("== Blockchain ==\n")
    for name, declaration in HELP.items():
        assert declaration.signature(name) in listing.splitlines()
    assert regtest_node.call("help", "nosuch") == "help: unknown command: nosuch"


def test_argument_errors_over_http(regtest_rpc: RpcServer) -> None:
    status, code, message = error_of(regtest_rpc, "getblockhash", "1")
    assert (status, code) == (500, -3) and message.startswith("Wrong type passed:\n{\n")
    assert error_of(regtest_rpc, "getblockhash") == (500, -1, GETBLOCKHASH_HELP)
