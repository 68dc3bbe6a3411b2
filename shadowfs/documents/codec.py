"""The generic mapping between document dataclasses, XML elements and plain dicts.

One job: given a dataclass whose fields carry XML metadata (made with `attr`,
`children`, `child`), check it, write it as a `Node`, read it back from a
`Node`, and convert it to and from a JSON-able dict. The documents' own
modules (`wmd.py`, `bcd.py`) only declare fields and add the rules that span
several fields.

Field kinds:
- `attr("xmlName", check=f)`: a scalar written as an XML attribute. Scalars
  are str, bool (`yes`/`no`), int (decimal), `uuid.UUID` (canonical lowercase
  form), a `StrEnum` (its value), an `IntFlag` (its decimal value), or one of
  these or None (attribute absent). A field with no default is required.
- `children("TAG")`: a `list` of dataclasses, each one child element <TAG>.
- `child("TAG")`: one optional dataclass, zero or one child element <TAG>.
- `plain(...)`: a field that lives only in Python and the dict form.

Reading is strict: an unknown attribute or element, a missing required
attribute, a value of the wrong form, repeated single children and text are
all `DocumentError`s naming the element path (`BACKUP_COMPONENTS/
WRITER_COMPONENTS[1]/COMPONENT[2]`), the attribute and, for XML, the line.
The dict form uses the Python field names, str for UUIDs and enums, int for
flags, and nested dicts and lists; it is just as strict.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from shadowfs.documents.errors import DocumentError
from shadowfs.documents.rules import check_text, check_u64
from shadowfs.documents.xmlsafe import Node

Check = Callable[[Any], None]
T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


def attr(xml: str, *, default: Any = _MISSING, default_factory: Any = _MISSING,
         check: Check | None = None) -> Any:
    """A field written as the XML attribute `xml`; required when it has no default."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"kind": "attr", "xml": xml, "check": check})


def children(xml: str) -> Any:
    """A list field written as child elements <xml>."""
    return dataclasses.field(default_factory=list, metadata={"kind": "children", "xml": xml})


def child(xml: str) -> Any:
    """An optional dataclass field written as at most one child element <xml>."""
    return dataclasses.field(default=None, metadata={"kind": "child", "xml": xml})


def plain(*, default: Any = _MISSING, default_factory: Any = _MISSING, check: Check | None = None) -> Any:
    """A field with no XML form of its own (the document module writes it, or it is Python-only)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"kind": "plain", "check": check})


@dataclasses.dataclass(frozen=True)
class _FieldInfo:
    name: str
    kind: str
    xml: str
    hint: Any
    base: Any  # the hint without "| None"
    optional: bool
    required: bool
    check: Check | None
    default: Any
    default_factory: Any


def field_infos(cls: type) -> tuple[_FieldInfo, ...]:
    """The fields of a document dataclass with their resolved types and XML metadata."""
    # through a plain `type` parameter: mypy takes a `type[X]` argument for unhashable in the cache's call
    return _field_infos(cls)


@functools.cache
def _field_infos(cls: type) -> tuple[_FieldInfo, ...]:
    hints = typing.get_type_hints(cls)
    infos = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        base, optional = hint, False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base, optional = args[0], len(args) < len(typing.get_args(hint))
        infos.append(_FieldInfo(
            name=f.name, kind=f.metadata.get("kind", "plain"), xml=f.metadata.get("xml", ""),
            hint=hint, base=base, optional=optional,
            required=f.default is _MISSING and f.default_factory is _MISSING,
            check=f.metadata.get("check"), default=f.default, default_factory=f.default_factory))
    return tuple(infos)


def _list_item(info: _FieldInfo) -> Any:
    return typing.get_args(info.base)[0]


# ---- scalars ---------------------------------------------------------------------------------------------

def _scalar_ok(value: Any, base: Any) -> bool:
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(base, type) and issubclass(base, enum.Flag):
        return isinstance(value, base)
    return isinstance(value, base)


def _type_name(base: Any) -> str:
    return getattr(base, "__name__", str(base))


def _xml_encode(value: Any, base: Any) -> str:
    if base is bool:
        return "yes" if value else "no"
    if isinstance(base, type) and issubclass(base, enum.Flag):
        return str(int(value))
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return str(value.value)
    return str(value)


def decode_scalar(text: Any, base: Any, *, from_xml: bool) -> Any:
    """Decode one scalar; raise ValueError with a short reason."""
    if base is str:
        if not isinstance(text, str):
            raise ValueError(f"expected a string, got {type(text).__name__}")
        return text
    if base is bool:
        if from_xml:
            if text == "yes":
                return True
            if text == "no":
                return False
            raise ValueError("expected 'yes' or 'no'")
        if not isinstance(text, bool):
            raise ValueError("expected true or false")
        return text
    if base is int:
        return _decode_integer(text, from_xml)
    if isinstance(base, type) and issubclass(base, enum.Flag):
        number = _decode_integer(text, from_xml)
        known = 0
        for member in base:
            known |= member.value
        if number < 0 or number & ~known:
            raise ValueError(f"has bits that are not {_type_name(base)} flags ({number:#x})")
        return base(number)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        try:
            return base(text)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in base)
            raise ValueError(f"is not a {_type_name(base)} (one of: {allowed})") from None
    if base is uuid.UUID:
        if not isinstance(text, str) or len(text) > 64:
            raise ValueError("expected a UUID string")
        try:
            return uuid.UUID(text)
        except ValueError:
            raise ValueError("is not a UUID") from None
    raise TypeError(f"unsupported field type {base!r}")  # pragma: no cover - a programming error


def _decode_integer(text: Any, from_xml: bool) -> int:
    if from_xml:
        if not (text.isascii() and text.isdigit()) or len(text) > 20:
            raise ValueError("expected an unsigned decimal integer")
        return int(text)
    if not isinstance(text, int) or isinstance(text, bool):
        raise ValueError("expected an integer")
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _where(path: str, line: int) -> str:
    return f"{path} (line {line})" if line else path


def check_scalar(info: _FieldInfo, value: Any, where: str, line: int = 0) -> None:
    """Type and rule check of one scalar field value; raises DocumentError naming where."""
    label = f"{_where(where, line)}: attribute {info.xml or info.name}"
    if value is None:
        if info.optional:
            return
        raise DocumentError(f"{label} is missing")
    if not _scalar_ok(value, info.base):
        raise DocumentError(f"{label} must be {_type_name(info.base)}, not {type(value).__name__}")
    try:
        if info.base is str:
            check_text(value)
        if info.base is int:
            check_u64(value)
        if info.check is not None:
            info.check(value)
    except DocumentError as exc:
        raise type(exc)(f"{label}={_shown(value)}: {exc}") from None


# ---- validation walk -------------------------------------------------------------------------------------

def check_tree(obj: Any, where: str, scalars: bool = True) -> None:
    """Check every field of `obj` and, recursively, of its children (types and value rules).

    With `scalars` false only the rules spanning several fields (the
    `_check_rules(where, scalars)` hooks) run: for a tree `from_node` just
    built, whose every scalar it already checked.
    """
    for info in field_infos(type(obj)):
        value = getattr(obj, info.name)
        if info.kind == "children":
            if not isinstance(value, list):
                raise DocumentError(f"{where}: {info.name} must be a list, not {type(value).__name__}")
            item_cls = _list_item(info)
            for index, item in enumerate(value, 1):
                if not isinstance(item, item_cls):
                    raise DocumentError(f"{where}: {info.name}[{index}] must be {item_cls.__name__}, "
                                        f"not {type(item).__name__}")
                check_tree(item, f"{where}/{info.xml}[{index}]", scalars)
        elif info.kind == "child":
            if value is not None:
                if not isinstance(value, info.base):
                    raise DocumentError(f"{where}: {info.name} must be {info.base.__name__} or None")
                check_tree(value, f"{where}/{info.xml}", scalars)
        elif dataclasses.is_dataclass(info.base) or typing.get_origin(info.base) is list:
            continue  # composite plain fields are the document module's business
        elif scalars:
            check_scalar(info, value, where)
    hook = getattr(obj, "_check_rules", None)
    if hook is not None:
        hook(where, scalars)


# ---- XML -------------------------------------------------------------------------------------------------

def to_node(obj: Any, tag: str) -> Node:
    """Write `obj` (already checked) as element <tag> with its attributes and children."""
    node = Node(tag)
    for info in field_infos(type(obj)):
        value = getattr(obj, info.name)
        if info.kind == "attr":
            if value is not None:
                node.attrib[info.xml] = _xml_encode(value, info.base)
        elif info.kind == "children":
            node.children.extend(to_node(item, info.xml) for item in value)
        elif info.kind == "child" and value is not None:
            node.children.append(to_node(value, info.xml))
    return node


def _index_label(node: Node, siblings: dict[str, int]) -> str:
    siblings[node.tag] = siblings.get(node.tag, 0) + 1
    return f"{node.tag}[{siblings[node.tag]}]"


def from_node(cls: type[T], node: Node, where: str, *, extra_attrs: frozenset[str] = frozenset(),
              extra_children: frozenset[str] = frozenset(), **given: Any) -> T:
    """Read element `node` as `cls`; attributes in `extra_attrs` and children in `extra_children` are
    left to the caller, which passes their values as keyword arguments in `given`."""
    infos = field_infos(cls)
    attrs = {i.xml: i for i in infos if i.kind == "attr"}
    for name in node.attrib:
        if name not in attrs and name not in extra_attrs:
            raise DocumentError(f"{_where(where, node.line)}: unknown attribute {name!r}")
    kwargs: dict[str, Any] = dict(given)
    for info in infos:
        if info.kind != "attr" or info.name in given:
            continue
        text = node.attrib.get(info.xml)
        if text is None:
            if info.required:
                raise DocumentError(f"{_where(where, node.line)}: required attribute {info.xml} is missing")
            continue
        try:
            value = decode_scalar(text, info.base, from_xml=True)
        except ValueError as exc:
            raise DocumentError(
                f"{_where(where, node.line)}: attribute {info.xml}={_shown(text)} {exc}") from None
        check_scalar(info, value, where, node.line)
        kwargs[info.name] = value
    by_tag = {i.xml: i for i in infos if i.kind in ("children", "child")}
    siblings: dict[str, int] = {}
    for sub in node.children:
        label = _index_label(sub, siblings)
        if sub.tag in extra_children:
            continue
        found = by_tag.get(sub.tag)
        if found is None:
            raise DocumentError(f"{_where(where, sub.line)}: unexpected element <{sub.tag}> in <{node.tag}>")
        if found.kind == "children":
            kwargs.setdefault(found.name, []).append(from_node(_list_item(found), sub, f"{where}/{label}"))
        else:
            if found.name in kwargs:
                raise DocumentError(f"{_where(where, sub.line)}: more than one <{sub.tag}> in <{node.tag}>")
            kwargs[found.name] = from_node(found.base, sub, f"{where}/{sub.tag}")
    return cls(**kwargs)


def check_root(node: Node, tag: str, version_attr: str, version: str) -> None:
    """Check the root element's tag and the major part of its format version."""
    if node.tag != tag:
        raise DocumentError(f"wrong root element <{node.tag}>: expected <{tag}>")
    found = node.attrib.get(version_attr)
    if found is None:
        raise DocumentError(f"{tag} (line {node.line}): required attribute {version_attr} is missing")
    if found.split(".")[0] != version.split(".")[0]:
        raise DocumentError(f"{tag}: unsupported {version_attr} {found!r} (this shadowfs reads {version})")


# ---- plain dicts -----------------------------------------------------------------------------------------

def to_plain(obj: Any) -> dict[str, Any]:
    """The JSON-able dict of a document dataclass (field names as keys)."""
    out: dict[str, Any] = {}
    for info in field_infos(type(obj)):
        value = getattr(obj, info.name)
        out[info.name] = _plain_value(value)
    return out


def _plain_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Flag):
        return value.value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, int):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_plain_value(item) for item in value]
    if dataclasses.is_dataclass(value):
        return to_plain(value)
    raise TypeError(f"cannot convert {type(value).__name__} to a plain value")  # pragma: no cover


def from_plain(cls: type[T], data: Any, where: str) -> T:
    """Read a dict made by `to_plain` back as `cls` (strict: unknown or missing keys are errors)."""
    if not isinstance(data, dict):
        raise DocumentError(f"{where}: expected an object, got {type(data).__name__}")
    infos = field_infos(cls)
    names = {i.name for i in infos}
    for key in data:
        if key not in names:
            raise DocumentError(f"{where}: unknown key {key!r}")
    kwargs: dict[str, Any] = {}
    for info in infos:
        if info.name not in data:
            if info.required:
                raise DocumentError(f"{where}: required key {info.name!r} is missing")
            continue
        kwargs[info.name] = _plain_field(info, data[info.name], f"{where}.{info.name}")
    return cls(**kwargs)


def _plain_field(info: _FieldInfo, value: Any, where: str) -> Any:
    if value is None and info.optional:
        return None
    base = info.base
    if typing.get_origin(base) is list:
        if not isinstance(value, list):
            raise DocumentError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(base)[0]
        return [_plain_item(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _plain_item(base, value, where)


def _plain_item(base: Any, value: Any, where: str) -> Any:
    if isinstance(base, type) and dataclasses.is_dataclass(base):
        return from_plain(base, value, where)
    try:
        return decode_scalar(value, base, from_xml=False)
    except ValueError as exc:
        raise DocumentError(f"{where}: {_shown(value)} {exc}") from None
