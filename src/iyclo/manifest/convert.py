"""Manifest ⇄ JSON, with every problem reported at its JSON path.

cattrs does the walking (with detailed validation, so it collects *all* errors of
a manifest); this module adds strict primitive hooks (cattrs would happily turn
``42`` into ``"42"``), camelCase keys, and turns cattrs' exception groups into
lines such as ``containers[1].resources.memory: "12Q" is not a size``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from iyclo.errors import InvalidError
from iyclo.manifest.model import KINDS, Manifest, SystemdSandbox
from iyclo.manifest.policy import (
    DEFAULT_POLICY,
    REFUSED_SYSTEMD_DIRECTIVES,
    Policy,
    env_file_problems,
    host_problems,
    problems,
    secret_problems,
)
from iyclo.manifest.values import VALUE_RULES, show

T = TypeVar("T")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_MANIFEST_BYTES = 1024 * 1024
"""The largest manifest text accepted, as the JSON socket's line limit: a real one is a
few KiB, and everything after parsing costs time in proportion to it."""
MAX_DETAILS = 100
"""Problems listed per manifest; a reply of a million lines helps nobody."""
_INT_RANGE = (-(2**63), 2**63 - 1)  # what systemd's and Podman's integer fields can hold


def camel(name: str) -> str:
    """The JSON key of a field: ``read_only_rootfs`` → ``readOnlyRootfs``."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def json_keys(cls: type) -> dict[str, str]:
    return {f.name: camel(f.name) for f in attrs.fields(cls)}


def _show(value: Any) -> str:
    return show(value, limit=40)


_JSON_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _text_problem(value: str) -> str | None:
    """What no string of a manifest may hold: it becomes argv, environment, labels and unit
    properties, where a NUL cannot pass and a lone surrogate (JSON's "\\ud800") cannot
    be encoded for D-Bus or Podman."""
    if "\0" in value:
        return f"{_show(value)} contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{_show(value)} is not valid Unicode text (a lone surrogate)"
    return None


def _strict(base: type) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        ok = isinstance(value, base) and not (base is not bool and isinstance(value, bool))
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value) if abs(value) < 2**1023 else math.inf
        if not ok:
            raise TypeError(f"expected {_JSON_TYPE_NAMES[base]}, got {_show(value)}")
        if base is str and (problem := _text_problem(value)) is not None:
            raise ValueError(problem)
        if base is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise ValueError(f"{_show(value)} is out of range")
        if base is float and not math.isfinite(value):
            raise ValueError(f"{_show(value)} is not a finite number")
        return value

    return hook


def _origin(tp: Any) -> Any:
    """``typing.get_origin``, typed loosely so comparisons with special forms type-check."""
    return get_origin(tp)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True)
    for base in (str, int, float, bool):
        conv.register_structure_hook(base, _strict(base))

    for newtype, rule in VALUE_RULES.items():
        base_hook = _strict(rule.base)

        def value_hook(value: Any, _: Any, _base: Any = base_hook, _check: Any = rule.check) -> Any:
            checked = _base(value, None)
            _check(checked)
            return checked

        conv.register_structure_hook(newtype, value_hook)

    def literal_hook(value: Any, cl: Any) -> Any:
        choices = get_args(cl)
        if value not in choices or isinstance(value, bool):
            options = ", ".join(json.dumps(c) for c in choices)
            raise ValueError(f"{_show(value)} is not one of {options}")
        return value

    conv.register_structure_hook_func(lambda t: _origin(t) is Literal, literal_hook)

    def tuple_hook(value: Any, cl: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {_show(value)}")
        elem = get_args(cl)[0]
        hook = conv.get_structure_hook(elem)
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(hook(item, elem))
            except Exception as exc:  # collected and re-raised as one group below
                exc.__notes__ = [*getattr(exc, "__notes__", []), _note(index, elem)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {cl!r}", errors, cl)
        return tuple(items)

    conv.register_structure_hook_func(
        lambda t: _origin(t) is tuple and get_args(t)[-1:] == (...,), tuple_hook
    )

    def dict_hook(value: Any, cl: Any) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {_show(value)}")
        key_type, value_type = get_args(cl)
        key_hook, value_hook_ = (
            conv.get_structure_hook(key_type),
            conv.get_structure_hook(value_type),
        )
        out, errors = {}, []
        for key, item in value.items():
            try:
                out[key_hook(key, key_type)] = value_hook_(item, value_type)
            except Exception as exc:  # collected and re-raised as one group below
                exc.__notes__ = [*getattr(exc, "__notes__", []), _note(key, value_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {cl!r}", errors, cl)
        return out

    conv.register_structure_hook_func(lambda t: _origin(t) is dict, dict_hook)

    def attrs_structure_factory(cl: type) -> Callable[[Any, Any], Any]:
        renames = {name: override(rename=key) for name, key in json_keys(cl).items()}
        generated: Callable[[Any, Any], Any] = make_dict_structure_fn(
            cl, conv, _cattrs_forbid_extra_keys=True, **cast(dict[str, Any], renames)
        )

        def hook(value: Any, _: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {_show(value)}")
            return generated(value, cl)

        return hook

    def attrs_unstructure_factory(cl: type) -> Callable[[Any], Any]:
        renames = {
            f.name: override(rename=camel(f.name), omit_if_default=f.default is not attrs.NOTHING)
            for f in attrs.fields(cl)
        }
        return make_dict_unstructure_fn(cl, conv, **cast(dict[str, Any], renames))

    conv.register_structure_hook_factory(attrs.has, attrs_structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, attrs_unstructure_factory)
    conv.register_unstructure_hook_func(
        lambda t: _origin(t) is tuple, lambda v: [conv.unstructure(i) for i in v]
    )
    return conv


def _note(index: int | str, elem: Any) -> IterableValidationNote:
    return IterableValidationNote(f"Structuring @ {index!r}", index, elem)


CONVERTER = _make_converter()


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT_RE.fullmatch(key) and len(key) <= 64:
        return f"{path}.{key}" if path else key
    return f"{path or 'manifest'}[{show(key)}]"


def _invalid(errors: list[str]) -> InvalidError:
    """One InvalidError for ``errors``, at most ``MAX_DETAILS`` lines of them."""
    if len(errors) > MAX_DETAILS:
        hidden = len(errors) - MAX_DETAILS + 1
        errors = [*errors[: MAX_DETAILS - 1], f"manifest: {hidden} more problems not shown"]
    return InvalidError(errors[0], errors)


def _messages(exc: BaseException, path: str, cl: type | None = None) -> list[str]:
    where = path or "manifest"
    if isinstance(exc, ClassValidationError):
        keys = json_keys(exc.cl)
        with_notes, without = exc.group_exceptions()
        out = [m for sub, n in with_notes for m in _messages(sub, _join(path, keys[n.name]))]
        return out + [m for sub in without for m in _messages(sub, path, exc.cl)]
    if isinstance(exc, IterableValidationError):
        with_notes_i, without_i = exc.group_exceptions()
        out = [m for sub, n in with_notes_i for m in _messages(sub, _join(path, n.index))]
        return out + [m for sub in without_i for m in _messages(sub, path)]
    if isinstance(exc, ForbiddenExtraKeysError):
        lines = []
        for key in sorted(exc.extra_fields):
            reason = REFUSED_SYSTEMD_DIRECTIVES.get(key) if exc.cl is SystemdSandbox else None
            text = f"refused: {reason}" if reason else "unknown field"
            lines.append(f"{_join(path, key)}: {text}")
        return lines
    if isinstance(exc, KeyError):
        return [f"{where}: is required"]
    return [f"{where}: {exc}"]


def parse_manifest(data: Any, policy: Policy = DEFAULT_POLICY) -> Manifest:
    """A manifest from decoded JSON, or InvalidError listing every problem."""
    if not isinstance(data, dict):
        raise InvalidError(f"manifest: expected an object, got {_show(data)}")
    errors: list[str] = []
    if data.get("apiVersion") != "iyclo/v1":
        errors.append(
            f'apiVersion: {_show(data.get("apiVersion"))} is not supported (use "iyclo/v1")'
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        errors.append(f'kind: {_show(kind)} is not one of "Pod", "Job", "Network"')
        raise _invalid(errors)
    try:
        manifest: Manifest = CONVERTER.structure(data, KINDS[kind])
    except (ClassValidationError, IterableValidationError) as exc:
        messages = _messages(exc, "")
        errors.extend(m for m in messages if not m.startswith("apiVersion:"))
        raise _invalid(errors) from None
    errors.extend(problems(manifest, policy))
    if errors:
        raise _invalid(errors)
    return manifest


def structure(data: Any, cls: type[T]) -> T:
    """One of iyclo's attrs types (e.g. the daemon's config) from decoded JSON, with the
    manifest's strictness and path-qualified messages; InvalidError lists every problem."""
    if not isinstance(data, dict):
        raise InvalidError(f"expected an object, got {_show(data)}")
    try:
        result: T = CONVERTER.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        raise _invalid(_messages(exc, "")) from None
    return result


class _NotJson(ValueError):
    """A value Python's json module accepts and JSON does not (NaN, Infinity)."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def parse_manifest_text(
    text: str | bytes, source: str = "manifest", policy: Policy = DEFAULT_POLICY
) -> Manifest:
    """A manifest from JSON text; a syntax error names the line and column.

    Text only, no host: for the daemon's own checks of this host, ``load_manifest``.
    """
    size = len(text)
    if isinstance(text, str) and size <= MAX_MANIFEST_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MANIFEST_BYTES:
        raise InvalidError(
            f"{source}: {size} bytes is more than a manifest may have "
            f"({MAX_MANIFEST_BYTES} bytes, 1 MiB)"
        )
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        message = f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise InvalidError(message) from None
    except UnicodeDecodeError as exc:
        raise InvalidError(f"{source}: not UTF-8 text ({exc.reason})") from None
    except _NotJson as exc:
        raise InvalidError(f"{source}: invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidError(f"{source}: invalid JSON: nested too deeply") from None
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise InvalidError(f"{source}: invalid JSON: a number with too many digits") from None
    return parse_manifest(data, policy)


def load_manifest(
    manifest: str | dict[str, Any], policy: Policy = DEFAULT_POLICY, *, on_host: bool = True
) -> Manifest:
    """A manifest as the fronts pass it (JSON text, or already-decoded JSON), checked as
    the daemon must: its text, then (``on_host``) its host paths on this host
    (``host_problems``) and its secrets' sources (``secret_problems``).

    Without ``on_host`` nothing on the host is looked at: what the daemon answers a caller
    who may not deploy, since whether a path under an allowed root exists, is a link, or
    holds a secret of some size is root's to know.

    Blocking: it may run ``systemd-analyze`` (up to 10 s) and walks the file system. From
    the event loop, await ``load_manifest_async``.
    """
    if isinstance(manifest, str):
        parsed = parse_manifest_text(manifest, policy=policy)
    else:
        parsed = parse_manifest(manifest, policy)
    found = (
        host_problems(parsed, policy)
        + secret_problems(parsed, policy)
        + env_file_problems(parsed, policy)
        if on_host
        else []
    )
    if found:
        raise _invalid(found)
    return parsed


async def load_manifest_async(
    manifest: str | dict[str, Any], policy: Policy = DEFAULT_POLICY, *, on_host: bool = True
) -> Manifest:
    """``load_manifest`` in a worker thread: the event loop serves other callers while a
    calendar check or a large manifest is under way."""
    return await asyncio.to_thread(
        functools.partial(load_manifest, manifest, policy, on_host=on_host)
    )


def dump_manifest(manifest: Manifest) -> dict[str, Any]:
    """The canonical JSON form: camelCase keys, defaults left out."""
    result: dict[str, Any] = CONVERTER.unstructure(manifest)
    return result


def manifest_digest(manifest: Manifest) -> str:
    """A stable digest of the canonical form: equal manifests, equal digests."""
    canonical = json.dumps(dump_manifest(manifest), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
