"""The manifest's JSON Schema, generated from the attrs types.

Never written by hand: a field added to the model appears here on its own, and a
test validates every example and golden file against the result.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from iyclo import __version__
from iyclo.manifest.convert import camel
from iyclo.manifest.model import KINDS
from iyclo.manifest.values import VALUE_RULES

_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
}


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if tp in VALUE_RULES:
        rule = VALUE_RULES[tp]
        return {**_PRIMITIVES[rule.base], **rule.schema}
    if tp in _PRIMITIVES:
        return dict(_PRIMITIVES[tp])
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        inner = (
            _type_schema(options[0], defs)
            if len(options) == 1
            else {"anyOf": [_type_schema(a, defs) for a in options]}
        )
        return {"anyOf": [inner, {"type": "null"}]} if type(None) in args else inner
    if origin is tuple:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is dict:
        schema: dict[str, Any] = {"type": "object"}
        schema["additionalProperties"] = _type_schema(args[1], defs)
        key = _type_schema(args[0], defs)
        if "pattern" in key:
            schema["propertyNames"] = {"pattern": key["pattern"]}
        return schema
    if attrs.has(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder guards against recursion
            defs[tp.__name__] = _class_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _class_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        prop = _type_schema(hints[field.name], defs)
        if "doc" in field.metadata:
            prop = {**prop, "description": field.metadata["doc"]}
        if field.default is attrs.NOTHING:
            required.append(camel(field.name))
        elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            prop["default"] = field.default
        properties[camel(field.name)] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split("\n\n")[0].split())
    if required:
        schema["required"] = required
    return schema


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a manifest: a Pod, a Job or a Network."""
    defs: dict[str, Any] = {}
    one_of = [_type_schema(cls, defs) for cls in KINDS.values()]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://github.com/iyclo/iyclo/schema/manifest-{__version__}.json",
        "title": "iyclo manifest",
        "oneOf": one_of,
        "$defs": dict(sorted(defs.items())),
    }
