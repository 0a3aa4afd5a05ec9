"""Bitcoin Core's own consensus vectors through the node's script check.

Every entry of Core's `script_tests.json`, `tx_valid.json`,
`tx_invalid.json` and BIP341's key-path spends in
`bip341_wallet_vectors.json` (`../shared/vectors/bitcoin-core/`) goes through
`regtest.node.validation.verify_scripts`, the function the node's mempool
and block connection both call, directly rather than over HTTP so the whole
set takes about a second.  Each vector is checked:

1. under its own flags, with Core's expected outcome and, for script_tests,
   Core's exact error: its ScriptError_t name and the text the node puts in
   its reject reason (`mandatory-script-verify-flag-failed (<text>)`);
2. under the flags Core's tests derive from it (tx files: each flag dropped
   from or added to the set, the maximal/minimal checks of
   transaction_tests.cpp);
3. under the node's block flags and under its mempool flags (standard, with
   the consensus recheck), wherever Core's monotonicity states an outcome:
   removing flags never invalidates a valid script and adding flags never
   validates an invalid one.  Where the node's set is neither a subset of a
   passing vector's flags nor a superset of a failing one's, Core states no
   outcome; the node must then still answer with a pass or a TxRejected
   (never another exception), which is checked.

A vector is skipped only with a reason printed by pytest (`-rs`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from btclib.script.engine.flags import ScriptFlag
from btclib.script.witness import Witness
from btclib.tx.tx import Tx

from regtest.node.errors import TxRejected
from regtest.node.params import BLOCK_SCRIPT_FLAGS, STANDARD_SCRIPT_FLAGS
from regtest.node.script_errors import core_script_error_text
from regtest.node.validation import Coin, check_transaction, verify_scripts
from tests.regtest.core_vectors import (
    ALL_FLAGS,
    VECTORS_DIR,
    fill_flags,
    load,
    parse_flags,
    script_test_case,
    trim_flags,
    tx_cases,
)

pytestmark = pytest.mark.skipif(
    not VECTORS_DIR.is_dir(), reason=f"Core's vectors not found at {VECTORS_DIR}"
)

# script_tests.cpp's names for ScriptError_t; all but one are the enum's own
_CORE_TEST_NAME = {"NULLFAIL": "SIG_NULLFAIL"}


def _outcome(tx: object, coins: list[Coin], flags: ScriptFlag) -> TxRejected | None:
    """None when the node's script check passes under `flags`, else its refusal."""
    try:
        verify_scripts(tx, coins, flags)  # type: ignore[arg-type]
    except TxRejected as exc:
        return exc
    return None


def _node_runs(
    tx: object, coins: list[Coin], vector_flags: ScriptFlag, valid: bool
) -> list[str]:
    """Run under the node's block and mempool flags; return what went wrong."""
    problems = []
    for label, flags, recheck in (
        ("block", BLOCK_SCRIPT_FLAGS, None),
        ("mempool", STANDARD_SCRIPT_FLAGS, BLOCK_SCRIPT_FLAGS),
    ):
        try:
            verify_scripts(tx, coins, flags, recheck)  # type: ignore[arg-type]
            passed = True
        except TxRejected:
            passed = False
        # Core's monotonicity: fewer flags keep a valid script valid, more
        # flags keep an invalid one invalid; otherwise no outcome is stated
        if valid and flags & ~vector_flags == ScriptFlag(0) and not passed:
            problems.append(f"refused under the node's {label} flags")
        if not valid and vector_flags & ~flags == ScriptFlag(0) and passed:
            problems.append(f"accepted under the node's {label} flags")
    return problems


SCRIPT_TESTS = load("script_tests.json") if VECTORS_DIR.is_dir() else []


@pytest.mark.parametrize("entry", SCRIPT_TESTS, ids=[str(i) for i in range(len(SCRIPT_TESTS))])
def test_script_tests_vector(entry: list[object]) -> None:
    case = script_test_case(entry)
    expected = _CORE_TEST_NAME.get(case.expected, case.expected)
    refusal = _outcome(case.tx, [case.coin], case.flags)
    if expected == "OK":
        assert refusal is None, f"{case.comment}: refused with {refusal}"
    else:
        assert refusal is not None, f"{case.comment}: accepted, Core: {expected}"
        assert refusal.script_error == expected, case.comment
        assert refusal.reason == (
            f"mandatory-script-verify-flag-failed ({core_script_error_text(expected)})"
        )
    assert _node_runs(case.tx, [case.coin], case.flags, expected == "OK") == []


TX_VALID = tx_cases("tx_valid.json") if VECTORS_DIR.is_dir() else []
TX_INVALID = tx_cases("tx_invalid.json") if VECTORS_DIR.is_dir() else []


@pytest.mark.parametrize("case", TX_VALID, ids=[str(i) for i in range(len(TX_VALID))])
def test_tx_valid_vector(case: object) -> None:
    from tests.regtest.core_vectors import TxCase

    assert isinstance(case, TxCase)
    check_transaction(case.tx)  # CheckTransaction must pass
    excluded = parse_flags(case.flags_text)
    flags = ALL_FLAGS & ~excluded
    assert _outcome(case.tx, case.coins, flags) is None, case.comment
    for flag in ScriptFlag:
        # removing any flag keeps it valid
        fewer = trim_flags(flags & ~flag)
        assert _outcome(case.tx, case.coins, fewer) is None, f"{flag.name}: {case.comment}"
    for flag in excluded:
        # the excluded set is minimal: putting back any one of its flags fails it
        back = trim_flags(excluded & ~flag)
        assert _outcome(case.tx, case.coins, ALL_FLAGS & ~back) is not None, (
            f"{flag.name}: {case.comment}"
        )
    assert _node_runs(case.tx, case.coins, flags, True) == [], case.comment


@pytest.mark.parametrize("case", TX_INVALID, ids=[str(i) for i in range(len(TX_INVALID))])
def test_tx_invalid_vector(case: object) -> None:
    from tests.regtest.core_vectors import TxCase

    assert isinstance(case, TxCase)
    if case.flags_text == "BADTX":
        # Core decides these in CheckTransaction, before any script runs
        with pytest.raises(TxRejected):
            check_transaction(case.tx)
        return
    check_transaction(case.tx)
    flags = parse_flags(case.flags_text)
    assert flags == fill_flags(flags), "Core's test refuses an unfilled flag set"
    assert _outcome(case.tx, case.coins, flags) is not None, case.comment
    for flag in ScriptFlag:
        # adding any flag keeps it invalid
        more = fill_flags(flags | flag)
        assert _outcome(case.tx, case.coins, more) is not None, f"{flag.name}: {case.comment}"
    for flag in flags:
        # the flag set is minimal: without any one of them it passes
        fewer = trim_flags(flags & ~flag)
        assert _outcome(case.tx, case.coins, fewer) is None, f"{flag.name}: {case.comment}"
    assert _node_runs(case.tx, case.coins, flags, False) == [], case.comment


def _bip341() -> dict[str, Any]:
    with (VECTORS_DIR / "bip341_wallet_vectors.json").open() as handle:
        data: dict[str, Any] = json.load(handle)
    return data


BIP341 = _bip341() if VECTORS_DIR.is_dir() else {"keyPathSpending": [], "scriptPubKey": []}
KEY_PATH_INPUTS = [
    (spending["given"], item)
    for spending in BIP341["keyPathSpending"]
    for item in spending["inputSpending"]
]


@pytest.mark.parametrize(
    ("given", "item"), KEY_PATH_INPUTS, ids=[str(i) for i in range(len(KEY_PATH_INPUTS))]
)
def test_bip341_key_path_vector(given: dict[str, Any], item: dict[str, Any]) -> None:
    """BIP341's signed key-path inputs verify under the node's flags; a bit flipped fails."""
    tx = Tx.parse(bytes.fromhex(given["rawUnsignedTx"]), check_validity=False)
    coins = [
        Coin(utxo["amountSats"], bytes.fromhex(utxo["scriptPubKey"]), 1, False)
        for utxo in given["utxosSpent"]
    ]
    index = item["given"]["txinIndex"]
    witness = [bytes.fromhex(element) for element in item["expected"]["witness"]]
    tx.vin[index].script_witness = Witness(witness, check_validity=False)
    verify_scripts(tx, coins, BLOCK_SCRIPT_FLAGS, inputs=[index])
    verify_scripts(tx, coins, STANDARD_SCRIPT_FLAGS, BLOCK_SCRIPT_FLAGS, inputs=[index])
    forged = bytearray(witness[0])
    forged[10] ^= 1
    tx.vin[index].script_witness = Witness([bytes(forged), *witness[1:]], check_validity=False)
    with pytest.raises(TxRejected) as refusal:
        verify_scripts(tx, coins, BLOCK_SCRIPT_FLAGS, inputs=[index])
    assert refusal.value.script_error == "SCHNORR_SIG"
    assert refusal.value.reason == "mandatory-script-verify-flag-failed (Invalid Schnorr signature)"


@pytest.mark.parametrize("entry", BIP341["scriptPubKey"])
def test_bip341_script_pub_key_vector(entry: dict[str, Any]) -> None:
    pytest.skip(
        "BIP341 scriptPubKey vectors derive outputs and addresses from key trees; they carry "
        "no spend for the node to validate (script-path spends are covered by script_tests)"
    )


def test_tapscript_checksig_with_an_empty_key_is_cores_pubkeytype() -> None:
    """BIP342: an empty public key fails the script; Core v28 names it PUBKEYTYPE.

    No Core vector above covers it (btclib has its own TAPSCRIPT_EMPTY_PUBKEY for it),
    so the case is built in the vectors' own format.
    """
    case = script_test_case(
        [
            ["11" * 64, "#SCRIPT# 0 CHECKSIG", "#CONTROLBLOCK#", 0.00000001],
            "",
            "0x51 0x20 #TAPROOTOUTPUT#",
            "P2SH,WITNESS,TAPROOT",
            "PUBKEYTYPE",
        ]
    )
    refusal = _outcome(case.tx, [case.coin], case.flags)
    assert refusal is not None and refusal.script_error == "PUBKEYTYPE"
    assert refusal.reason == (
        "mandatory-script-verify-flag-failed (Public key is neither compressed or uncompressed)"
    )
