"""A newcomer follows the client quickstart: the shell block of
docs/quickstart-client.md ("Try it first"), run as it is by bash with the installed
`chanhub` and `chanhub-regtest` on the PATH, pays an invoice from the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from regtest.cli import main as regtest_cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart-client.md"
MARKER = "<!-- tests/e2e/test_quickstart.py runs this block as it is -->"


def quickstart_block() -> str:
    match = re.search(re.escape(MARKER) + r"\n```sh\n(.*?)```", QUICKSTART.read_text(), re.S)
    assert match is not None, f"{QUICKSTART.name} lost its tested block ({MARKER})"
    return match.group(1)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """The block's `mktemp -d` lands here; a network it left running is stopped."""
    yield tmp_path
    for network in tmp_path.glob("*/net"):
        CliRunner().invoke(regtest_cli, ["down", "--datadir", str(network)])


def test_the_quickstart_block_pays_an_invoice(scratch: Path) -> None:
    bin_dir = Path(sys.executable).parent  # the venv `make` built: its console scripts
    for command in ("chanhub", "chanhub-regtest"):
        assert shutil.which(command, path=str(bin_dir)), f"{command} is not in {bin_dir}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHANHUB_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", TMPDIR=str(scratch),
               COLUMNS="100")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", quickstart_block()], env=env,
                          cwd=scratch, capture_output=True, text=True, timeout=600)
    output = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{output}\n{done.stderr}"

    def field(name: str) -> list[str]:
        return re.findall(rf"│ {name}\s+│ (\S+)", output)

    # both `pay`s show one payment, succeeded, with the fee the page states
    assert field("state") == ["succeeded", "succeeded"], output
    assert len(set(field("payment_id"))) == 1, output
    stated_fee = re.search(r"fee_msat (\d+)", quickstart_block())
    assert stated_fee is not None
    assert field("fee_msat") == [stated_fee.group(1)] * 2, output
    assert field("amount_msat") == ["2000000"] * 2, output
    # Alice's own channel paid amount and fee, once
    [channel_msat] = field("channel_msat")
    assert int(channel_msat) == 500_000_000 - 2_000_000 - int(stated_fee.group(1)), output
    assert "stopped: " in output and "hub" in output.rsplit("stopped: ", 1)[1], output
