"""Safe parsing and plain writing of small XML documents: untrusted input in, a tree of `Node` out.

One job: turn bytes or text that may be hostile into a `Node` tree, fast and
with bounded memory, or refuse it with a `DocumentError` naming the problem.

Defences (the same expat settings defusedxml uses, plus limits):
- No DTD at all: a `<!DOCTYPE` is refused the moment expat sees it, so there
  is no entity declaration to expand (billion laughs, quadratic blowup), no
  external DTD and no external entity to fetch; parameter entity parsing is
  off; any entity declaration or external reference handler raises.
- A size cap checked before parsing (`XmlLimits.max_bytes`, 16 MiB by default;
  text input is measured in UTF-8 bytes).
- A depth cap (16) and an element-count cap (100,000; about 40 MiB of tree at
  most) checked as each start tag is seen, so a deep or wide document is
  refused before it is built. Documents with more elements need a larger
  `XmlLimits(max_elements=...)` passed to `from_xml`.
- No text content anywhere (every value lives in an attribute): non-blank text
  is refused. Comments and processing instructions are ignored.
- No namespace processing: a tag or attribute with a prefix is just an unknown
  name to the schema layer, which refuses it.

`serialize` writes a `Node` tree back as UTF-8 XML text with two-space indents,
escaping `& < > "` and CR, LF and TAB in attribute values so they survive
attribute-value normalisation (lossless round trip).
"""

from __future__ import annotations

import dataclasses
import pyexpat
from typing import Any, NoReturn

from shadowfs.documents.errors import DocumentError


@dataclasses.dataclass(frozen=True)
class XmlLimits:
    """Caps applied while parsing untrusted XML."""

    max_bytes: int = 16 * 1024 * 1024
    max_depth: int = 16
    max_elements: int = 100_000


DEFAULT_LIMITS = XmlLimits()


class Node:
    """One element: its tag, its attributes (in document order), its child elements, its line."""

    __slots__ = ("tag", "attrib", "children", "line")

    def __init__(self, tag: str, attrib: dict[str, str] | None = None, line: int = 0) -> None:
        self.tag = tag
        self.attrib: dict[str, str] = attrib if attrib is not None else {}
        self.children: list[Node] = []
        self.line = line

    def __repr__(self) -> str:
        return f"Node({self.tag!r}, {self.attrib!r}, {len(self.children)} children, line {self.line})"


def _refuse(what: str) -> NoReturn:
    raise DocumentError(f"unsafe XML refused: {what} (DTDs and entities are not allowed)")


def parse(data: str | bytes | bytearray | memoryview, limits: XmlLimits = DEFAULT_LIMITS) -> Node:
    """Parse untrusted XML into a `Node` tree; raise `DocumentError` for anything malformed or unsafe."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DocumentError(f"document text is not valid Unicode: {exc.reason} at {exc.start}") from None
        encoding: str | None = "UTF-8"
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        encoding = None
    else:
        raise DocumentError(f"a document must be str or bytes, not {type(data).__name__}")
    if len(raw) > limits.max_bytes:
        raise DocumentError(f"document too large: {len(raw)} bytes, the limit is {limits.max_bytes}")
    if not raw.strip():
        raise DocumentError("document is empty")

    parser = pyexpat.ParserCreate(encoding)
    parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    stack: list[Node] = []
    root: list[Node] = []
    count = 0

    def start(tag: str, attrib: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > limits.max_elements:
            raise DocumentError(f"too many elements: more than {limits.max_elements}")
        if len(stack) >= limits.max_depth:
            raise DocumentError(
                f"document too deep: <{tag}> at line {parser.CurrentLineNumber} is nested more than "
                f"{limits.max_depth} levels")
        node = Node(tag, attrib, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack.pop()

    def text(chars: str) -> None:
        if chars.strip():
            where = f"<{stack[-1].tag}>" if stack else "the document"
            snippet = chars.strip()[:40]
            raise DocumentError(
                f"unexpected text {snippet!r} inside {where} at line {parser.CurrentLineNumber}: "
                "values belong in attributes")

    def doctype(name: str, *args: Any) -> None:
        _refuse(f"<!DOCTYPE {name}> at line {parser.CurrentLineNumber}")

    def entity_decl(name: str, *args: Any) -> None:
        _refuse(f"entity declaration {name!r}")

    def external_ref(*args: Any) -> bool:
        _refuse("external entity reference")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity_decl
    parser.UnparsedEntityDeclHandler = entity_decl
    parser.ExternalEntityRefHandler = external_ref
    try:
        parser.Parse(raw, True)
    except pyexpat.ExpatError as exc:
        raise DocumentError(
            f"malformed XML: {pyexpat.ErrorString(exc.code)} at line {exc.lineno}, column {exc.offset}"
        ) from None
    except RecursionError:  # pragma: no cover - the depth cap makes this unreachable
        raise DocumentError("document too deep") from None
    if not root:  # pragma: no cover - expat reports "no element found" first
        raise DocumentError("document has no root element")
    return root[0]


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\r", "&#13;").replace("\n", "&#10;").replace("\t", "&#9;"))


def serialize(root: Node) -> str:
    """Write a `Node` tree as XML text (with an XML declaration), two-space indented."""
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n']

    def emit(node: Node, depth: int) -> None:
        pad = "  " * depth
        attrs = "".join(f' {name}="{_escape(value)}"' for name, value in node.attrib.items())
        if not node.children:
            out.append(f"{pad}<{node.tag}{attrs}/>\n")
            return
        out.append(f"{pad}<{node.tag}{attrs}>\n")
        for child in node.children:
            emit(child, depth + 1)
        out.append(f"{pad}</{node.tag}>\n")

    emit(root, 0)
    return "".join(out)
