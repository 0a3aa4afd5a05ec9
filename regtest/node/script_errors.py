"""Script failures in Bitcoin Core's words: btclib's errors mapped by meaning.

Core quotes a script failure as `mandatory-script-verify-flag-failed (<text>)`
(or `non-mandatory-...`), the text being `ScriptErrorString` of the
`ScriptError_t` its interpreter set.  btclib's engine raises a `ScriptError`
whose `code` mostly names the same failure, so most codes map to the Core
error of the same name.  They part where the two interpreters disagree on
what went wrong, and this module is the one place that knows where:

- btclib's `SCRIPTNUM` (a number operand over 4 bytes, or non-minimal under
  MINIMALDATA): Core's `CScriptNum` throws `scriptnum_error`, which
  `EvalScript` catches as `SCRIPT_ERR_UNKNOWN_ERROR`, "unknown error".
- `OP_IF`/`OP_NOTIF` executed on an empty stack: btclib pops and reports an
  invalid stack operation; Core checks the size first and sets
  `SCRIPT_ERR_UNBALANCED_CONDITIONAL`, "Invalid OP_IF construction".
- tapscript `CHECKSIG`/`CHECKSIGADD` with an empty public key: btclib's
  `TAPSCRIPT_EMPTY_PUBKEY`; Core v28 (BIP342 "the script MUST fail") sets
  `SCRIPT_ERR_PUBKEYTYPE`.
- any other exception out of the engine (btclib refusing malformed data
  outright): Core's `EvalScript` catches everything as "unknown error".

The mapping goes by name, never by number: btclib's `ScriptErrorCode` values
drift from Core's enum after member 4 (btclib inserts `SCRIPTNUM` there), so
an integer means different errors on the two sides.
"""

from __future__ import annotations

from btclib.exceptions import ScriptError, ScriptErrorCode

# Core's ScriptErrorString (src/script/script_error.cpp, v28), by enum name
# without the SCRIPT_ERR_ prefix.  btclib's descriptions are Core's texts for
# the members both share; the names only btclib has are left out, so asking
# for one is a KeyError rather than a text Core never prints.
CORE_SCRIPT_ERROR_TEXT: dict[str, str] = {
    code.name: code.description
    for code in ScriptErrorCode
    if code not in (ScriptErrorCode.SCRIPTNUM, ScriptErrorCode.TAPSCRIPT_EMPTY_PUBKEY)
}

# btclib codes whose failure Core names otherwise, whatever the context
_RENAMED: dict[ScriptErrorCode, str] = {
    ScriptErrorCode.SCRIPTNUM: "UNKNOWN_ERROR",
    ScriptErrorCode.TAPSCRIPT_EMPTY_PUBKEY: "PUBKEYTYPE",
}

# the btclib functions that pop an OP_IF/OP_NOTIF condition
_CONDITIONAL_OPS = frozenset({"op_if", "op_notif"})


def _raised_in_conditional(exc: BaseException) -> bool:
    """True when the failure started inside btclib's OP_IF/OP_NOTIF code.

    btclib's loop re-raises an operation's IndexError as a ScriptError with
    the original as its cause; the cause's traceback says which operation
    it was, which the ScriptError itself does not.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        traceback = cause.__traceback__
        while traceback is not None:
            if traceback.tb_frame.f_code.co_name in _CONDITIONAL_OPS:
                return True
            traceback = traceback.tb_next
        cause = cause.__cause__ or cause.__context__
    return False


def core_script_error(exc: BaseException) -> str:
    """The name of Core's ScriptError_t for a failure btclib's engine raised."""
    if not isinstance(exc, ScriptError):
        return "UNKNOWN_ERROR"
    code = exc.code
    if code in _RENAMED:
        return _RENAMED[code]
    if code is ScriptErrorCode.INVALID_STACK_OPERATION and _raised_in_conditional(exc):
        return "UNBALANCED_CONDITIONAL"
    return code.name


def core_script_error_text(name: str) -> str:
    """Core's ScriptErrorString for a Core error name."""
    return CORE_SCRIPT_ERROR_TEXT[name]
