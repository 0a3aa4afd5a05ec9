"""Generate docs/api-reference.md from the comments in proto/*.proto.

Theory of operation: protoc already parses the .proto files and keeps every comment
next to the element it belongs to, so this script never reads .proto text itself. It
asks grpc_tools.protoc for a FileDescriptorSet with `--include_source_info`, then
walks each file's services, messages, fields, enums and values, looking each one's
leading comment up in `SourceCodeInfo` by its descriptor path (the list of field
numbers and indexes that leads from the FileDescriptorProto to the element, as
descriptor.proto documents for `SourceCodeInfo.Location.path`). A file's header
comment is the comment above its `syntax` statement.

The output is deterministic (files, then elements in declaration order), so a test
(tests/docs/test_api_reference.py) can regenerate it and compare: the reference can
never drift from the .proto files.

Usage: `python -m proto.gen_api_reference` rewrites docs/api-reference.md;
`--check` exits 1 if the file on disk differs from what would be generated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PATH = REPO_ROOT / "docs" / "api-reference.md"
# The order a newcomer reads them in: what clients call, what operators call, the wire.
PROTO_FILES = ("proto/client.proto", "proto/admin.proto", "proto/peer.proto",
               "proto/tower.proto")

# Field numbers inside descriptor.proto, the steps of a SourceCodeInfo path.
_FILE_MESSAGE_TYPE = 4
_FILE_ENUM_TYPE = 5
_FILE_SERVICE = 6
_FILE_SYNTAX = 12
_MESSAGE_FIELD = 2
_MESSAGE_NESTED_TYPE = 3
_MESSAGE_ENUM_TYPE = 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_SCALAR_NAMES = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
}

Comments = dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location]


class ProtocError(RuntimeError):
    """protoc refused the .proto files (its diagnostics are on stderr)."""


def load_descriptor_set(proto_files: Iterable[str] = PROTO_FILES) -> (
    descriptor_pb2.FileDescriptorSet
):
    """Compile `proto_files` (relative to the repository root) with source info."""
    with tempfile.TemporaryDirectory() as scratch:
        out_path = Path(scratch) / "descriptors.pb"
        args = [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            "--include_source_info",
            f"--descriptor_set_out={out_path}",
            *(str(REPO_ROOT / name) for name in proto_files),
        ]
        if protoc.main(args) != 0:
            raise ProtocError("protoc failed on " + ", ".join(proto_files))
        return descriptor_pb2.FileDescriptorSet.FromString(out_path.read_bytes())


def _comment_text(location: descriptor_pb2.SourceCodeInfo.Location | None) -> str:
    """The leading (else trailing) comment, lines dedented by protoc's one space."""
    if location is None:
        return ""
    raw = location.leading_comments or location.trailing_comments
    lines = [line.removeprefix(" ") for line in raw.rstrip("\n").split("\n")]
    return "\n".join(lines).strip("\n")


def _one_line(text: str) -> str:
    """A comment fit for a table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _short_type(type_name: str, package: str) -> str:
    """`.chanhub.client.Channel` -> `Channel` in its own package, else `client.Channel`."""
    name = type_name.lstrip(".")
    if name.startswith(package + "."):
        return name[len(package) + 1 :]
    return name.removeprefix("chanhub.")


def _anchor(type_name: str) -> str:
    """The markdown anchor of a message or enum heading (`### chanhub.client.X`)."""
    return type_name.lstrip(".").replace(".", "").lower()


def _type_cell(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type_name:
        shown = f"[{_short_type(field.type_name, package)}](#{_anchor(field.type_name)})"
    else:
        shown = _SCALAR_NAMES[field.type]
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {shown}"
    if field.proto3_optional:
        return f"optional {shown}"
    return shown


class _FileRenderer:
    """Renders one FileDescriptorProto as a markdown section."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.file = file
        self.package = file.package
        self.comments: Comments = {
            tuple(location.path): location for location in file.source_code_info.location
        }
        self.out: list[str] = []

    def comment(self, path: tuple[int, ...]) -> str:
        return _comment_text(self.comments.get(path))

    def header_comment(self) -> str:
        location = self.comments.get((_FILE_SYNTAX,))
        if location is None:
            return ""
        # Attached to `syntax` when no blank line separates them, detached otherwise.
        blocks = [*location.leading_detached_comments, location.leading_comments]
        return "\n\n".join(
            _comment_text(descriptor_pb2.SourceCodeInfo.Location(leading_comments=block))
            for block in blocks
            if block.strip()
        )

    def render(self) -> str:
        self.out.append(f"## {self.file.name} (package `{self.package}`)\n")
        header = self.header_comment()
        if header:
            self.out.append("```text\n" + header + "\n```\n")
        for index, service in enumerate(self.file.service):
            self.render_service(service, (_FILE_SERVICE, index))
        if self.file.message_type:
            self.out.append(f"### Messages of `{self.package}`\n")
        for index, message in enumerate(self.file.message_type):
            self.render_message(message, (_FILE_MESSAGE_TYPE, index), self.package)
        if self.file.enum_type:
            self.out.append(f"### Enums of `{self.package}`\n")
        for index, enum in enumerate(self.file.enum_type):
            self.render_enum(enum, (_FILE_ENUM_TYPE, index), self.package)
        return "\n".join(self.out)

    def render_service(
        self, service: descriptor_pb2.ServiceDescriptorProto, path: tuple[int, ...]
    ) -> None:
        self.out.append(f"### service `{self.package}.{service.name}`\n")
        self.out.append(self.comment(path) + "\n")
        self.out.append("| rpc | request | response |\n|---|---|---|")
        for method in service.method:
            self.out.append(
                f"| [{method.name}](#{_anchor(self.package + service.name + method.name)}) "
                f"| {self.stream_cell(method.input_type, method.client_streaming)} "
                f"| {self.stream_cell(method.output_type, method.server_streaming)} |"
            )
        self.out.append("")
        for index, method in enumerate(service.method):
            self.out.append(f"#### {self.package}.{service.name}.{method.name}\n")
            signature = (
                f"rpc {method.name}({'stream ' if method.client_streaming else ''}"
                f"{_short_type(method.input_type, self.package)}) returns "
                f"({'stream ' if method.server_streaming else ''}"
                f"{_short_type(method.output_type, self.package)})"
            )
            self.out.append(f"```proto\n{signature}\n```\n")
            self.out.append(self.comment((*path, _SERVICE_METHOD, index)) + "\n")

    def stream_cell(self, type_name: str, streaming: bool) -> str:
        link = f"[{_short_type(type_name, self.package)}](#{_anchor(type_name)})"
        return f"stream {link}" if streaming else link

    def render_message(
        self, message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str
    ) -> None:
        full_name = f"{scope}.{message.name}"
        self.out.append(f"#### {full_name}\n")
        text = self.comment(path)
        if text:
            self.out.append(text + "\n")
        if message.field:
            self.out.append("| field | type | number | description |\n|---|---|---|---|")
            for index, field in enumerate(message.field):
                description = _one_line(self.comment((*path, _MESSAGE_FIELD, index)))
                if field.HasField("oneof_index") and not field.proto3_optional:
                    oneof = message.oneof_decl[field.oneof_index].name
                    description = f"(one of `{oneof}`) {description}"
                self.out.append(
                    f"| `{field.name}` | {_type_cell(field, self.package)} "
                    f"| {field.number} | {description} |"
                )
            self.out.append("")
        else:
            self.out.append("(no fields)\n")
        for index, nested in enumerate(message.nested_type):
            self.render_message(nested, (*path, _MESSAGE_NESTED_TYPE, index), full_name)
        for index, enum in enumerate(message.enum_type):
            self.render_enum(enum, (*path, _MESSAGE_ENUM_TYPE, index), full_name)

    def render_enum(
        self, enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str
    ) -> None:
        self.out.append(f"#### {scope}.{enum.name}\n")
        text = self.comment(path)
        if text:
            self.out.append(text + "\n")
        self.out.append("| value | number | description |\n|---|---|---|")
        for index, value in enumerate(enum.value):
            description = _one_line(self.comment((*path, _ENUM_VALUE, index)))
            self.out.append(f"| `{value.name}` | {value.number} | {description} |")
        self.out.append("")


def render_reference(descriptor_set: descriptor_pb2.FileDescriptorSet) -> str:
    """The whole reference page, one section per .proto file in PROTO_FILES order."""
    by_name = {file.name: file for file in descriptor_set.file}
    sections = [_FileRenderer(by_name[name]).render() for name in PROTO_FILES]
    contents = "\n".join(
        f"- [{name}](#{_anchor(name.replace('/', '').replace('.', ''))}"
        f"-package-{_anchor(by_name[name].package)})"
        for name in PROTO_FILES
    )
    intro = (
        "# Chanhub API reference\n\n"
        "<!-- Generated by `python -m proto.gen_api_reference` from proto/*.proto;"
        " do not edit. tests/docs/test_api_reference.py fails when it is stale. -->\n\n"
        "Every service, rpc, message, field and enum of Chanhub's gRPC API, with the"
        " comments of the `.proto` files. `client.proto` is what a client's SDK talks"
        " to (`Hub`, served by chanhubd) and what an application programs against"
        " (`Client`, the SDK's methods); `admin.proto` is the operator's API;"
        " `peer.proto` is the BOLT #2 message set carried on `Hub.PeerLink`; `tower.proto`"
        " is the watchtower's API (`chanhub-tower`, docs/tower.md).\n\n"
        + contents
        + "\n"
    )
    return intro + "\n" + "\n".join(sections).rstrip("\n") + "\n"


def generate() -> str:
    return render_reference(load_descriptor_set())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/api-reference.md is stale"
    )
    args = parser.parse_args(argv)
    generated = generate()
    if args.check:
        current = REFERENCE_PATH.read_text() if REFERENCE_PATH.exists() else ""
        if current != generated:
            print(f"{REFERENCE_PATH} is stale: run python -m proto.gen_api_reference")
            return 1
        return 0
    REFERENCE_PATH.write_text(generated)
    print(f"wrote {REFERENCE_PATH.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
