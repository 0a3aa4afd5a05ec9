"""docs/api-reference.md is generated from proto/*.proto and must never drift.

The first test is the guard: it regenerates the reference from the .proto files (their
descriptors with source info) and compares it with the committed page. The others
check that the generator really reads what protoc parsed: every service, rpc, message,
field and enum of the compiled modules appears, comments come from the descriptors,
and a changed comment changes the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proto import admin_pb2, client_pb2, peer_pb2
from proto import gen_api_reference as gen


def test_committed_reference_matches_the_proto_files() -> None:
    committed = gen.REFERENCE_PATH.read_text()
    assert committed == gen.generate(), (
        "docs/api-reference.md is stale: run `.venv/bin/python -m proto.gen_api_reference`"
    )


def test_every_element_of_the_compiled_modules_is_documented() -> None:
    page = gen.generate()
    for module in (client_pb2, admin_pb2, peer_pb2):
        file = module.DESCRIPTOR
        for service in file.services_by_name.values():
            assert f"### service `{service.full_name}`" in page
            for method in service.methods:
                assert f"#### {method.full_name}\n" in page
        for message in file.message_types_by_name.values():
            assert f"#### {message.full_name}\n" in page
            for field in message.fields:
                assert f"| `{field.name}` |" in page
        for enum in file.enum_types_by_name.values():
            assert f"#### {enum.full_name}\n" in page
            for value in enum.values:
                assert f"| `{value.name}` | {value.number} |" in page


def test_comments_come_from_the_descriptors() -> None:
    descriptor_set = gen.load_descriptor_set()
    page = gen.render_reference(descriptor_set)
    # A field comment, an rpc comment, an enum value comment and a file header,
    # one from each .proto file.
    assert "| `sequence` | uint64 | 1 | Per-client sequence number: 1, 2, 3, ..." in page
    assert "Answer a challenge with a signature by the client's node key" in page
    assert "| `CHANNEL_STATE_OPEN` | 2 | Usable for payments. |" in page
    assert "The operator's API of chanhubd" in page
    assert "rpc PeerLink(stream peer.PeerFrame) returns (stream peer.PeerFrame)" in page


def test_a_changed_comment_changes_the_page() -> None:
    descriptor_set = gen.load_descriptor_set()
    before = gen.render_reference(descriptor_set)
    client_file = next(f for f in descriptor_set.file if f.name == "proto/client.proto")
    location = next(
        loc for loc in client_file.source_code_info.location if loc.leading_comments.strip()
        and len(loc.path) == 4 and loc.path[0] == 6  # an rpc of a service
    )
    location.leading_comments = " A comment nobody wrote.\n"
    after = gen.render_reference(descriptor_set)
    assert after != before
    assert "A comment nobody wrote." in after


def test_check_mode_reports_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "api-reference.md"
    stale.write_text(gen.REFERENCE_PATH.read_text() + "\nedited by hand\n")
    monkeypatch.setattr(gen, "REFERENCE_PATH", stale)
    assert gen.main(["--check"]) == 1
    stale.write_text(gen.generate())
    assert gen.main(["--check"]) == 0
