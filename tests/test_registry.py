"""One method registry (``iyclo.contract.methods``) feeds every front; these hold the
JSON socket's handlers, the D-Bus interface, the D-Bus client, the introspection XML and
the system bus policy to it, so a method cannot be added, renamed or retyped in one place
only."""

from __future__ import annotations

import inspect
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from iyclo.api.dbus import ManagerInterface
from iyclo.api.jsonrpc import handlers
from iyclo.client.dbus import DBusClient
from iyclo.contract.methods import BY_NAME, DBUS_ONLY, METHODS, Access, ParamsError, bind
from iyclo.core.events import EventBus

DBUS_DIR = Path(__file__).parent.parent / "dbus"


class _Nothing:
    """Enough of a service to build the fronts' tables (nothing is called)."""

    events = EventBus()


def _registry_members() -> dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]]:
    members = {
        m.member: (
            [(p.dbus_arg, p.dbus) for p in m.params if p.dbus] + [(fd, "h") for fd in m.fds],
            [(o.name, o.dbus) for o in m.out],
        )
        for m in METHODS
        if m.member
    }
    members["Purge"] = ([("name", "s")], [])
    members["RemoveWith"] = ([("name", "s"), ("purge_history", "b"), ("volumes", "b")], [])
    members["ApplyWithin"] = ([("manifest_json", "s"), ("wait_timeout", "d")], members["Apply"][1])
    return members


def test_the_dbus_interface_is_the_registry() -> None:
    interface = ManagerInterface(_Nothing()).introspect()  # type: ignore[arg-type]
    exported = {
        m.name: ([(a.name, a.signature) for a in m.in_args],
                 [(a.name, a.signature) for a in m.out_args])
        for m in interface.methods
    }  # fmt: skip
    assert exported == _registry_members()
    assert set(DBUS_ONLY) == {"Purge", "ApplyWithin", "RemoveWith"}
    assert "Version" in {p.name for p in interface.properties}  # the member of `version`
    assert [m.name for m in METHODS if not m.member] == ["version"]


def test_the_introspection_xml_is_the_registry() -> None:
    root = ET.parse(DBUS_DIR / "io.github.iyclo1.Manager.xml").getroot()
    documented = {
        m.get("name"): (
            [(a.get("name"), a.get("type")) for a in m.findall("arg")
             if a.get("direction", "in") == "in"],
            [(a.get("name"), a.get("type")) for a in m.findall("arg")
             if a.get("direction") == "out"],
        )
        for m in root.iter("method")
    }  # fmt: skip
    assert documented == _registry_members()


def test_the_json_socket_serves_the_registry() -> None:
    table = handlers(_Nothing())  # type: ignore[arg-type]
    assert set(table) == set(BY_NAME)
    for name, handler in table.items():
        signature = inspect.signature(handler).parameters.values()
        parameters = [p.name for p in signature if p.kind is not p.KEYWORD_ONLY]
        assert parameters == [p.name for p in BY_NAME[name].params], name
        # A method taking the caller's descriptors gets them through the socket's handover.
        keyword_only = [p.name for p in signature if p.kind is p.KEYWORD_ONLY]
        assert keyword_only == (["handover"] if BY_NAME[name].fds else []), name


def test_the_dbus_client_speaks_the_registry() -> None:
    """Every method the generic rule serves has at most one out-argument to decode; the
    rest are the client's named special cases."""
    special = set(DBusClient.SPECIAL)
    assert special <= set(BY_NAME)
    for method in METHODS:
        if method.name in special:
            continue
        assert len(method.out) <= 1, method.name
        assert all(p.dbus or p.name in ("purge_history", "volumes") for p in method.params), (
            method.name
        )


def test_the_bus_lets_everyone_call_and_the_daemon_decides() -> None:
    """The bus policy cannot know the deploy group or polkit's grants: it lets every
    caller through to io.github.iyclo1, and each method's verb is the daemon's to check."""
    root = ET.parse(DBUS_DIR / "io.github.iyclo1.conf").getroot()
    default = next(p for p in root.iter("policy") if p.get("context") == "default")
    rules = [dict(rule.attrib) for rule in default]
    assert rules == [{"send_destination": "io.github.iyclo1"}]
    assert all(isinstance(m.access, Access) for m in METHODS)
    changes = {m.name for m in METHODS if m.access in (Access.DEPLOY, Access.MANAGE)}
    assert changes == {
        "apply", "remove", "start", "stop", "restart", "reconcile", "run_job", "pull",
        "rollback",
    }  # fmt: skip
    # Running a command in a container is a verb of its own: more than managing it.
    assert {m.name for m in METHODS if m.access is Access.EXEC} == {"exec"}
    assert {m.name for m in METHODS if m.fds} == {"exec", "follow_logs"}
    assert BY_NAME["follow_logs"].access is Access.READ_LOGS
    assert BY_NAME["stats"].access is Access.READ


@pytest.mark.parametrize(
    ("method", "params", "bound"),
    [
        ("logs", {"name": "x"}, {"name": "x", "run": 0, "lines": None}),
        ("logs", ["x", 2, 5], {"name": "x", "run": 2, "lines": 5}),
        (
            "remove",
            {"name": "x", "purge_history": True},
            {"name": "x", "purge_history": True, "volumes": False},
        ),
        (
            "apply",
            {"manifest": {"kind": "Pod"}},
            {"manifest": {"kind": "Pod"}, "wait_timeout": None},
        ),
    ],
)
def test_bind_fills_defaults(method: str, params: Any, bound: dict[str, Any]) -> None:
    assert bind(method, params) == bound


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("fly", {}, "unknown method 'fly'"),
        ("get_manifest", {"name": "x", "generation": True}, "must be an integer"),
        ("remove", {"name": "x", "purge_history": 1}, "must be true or false"),
        ("apply", {"manifest": 3}, "must be a string or an object"),
    ],
)
def test_bind_refuses(method: str, params: Any, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        bind(method, params)


def test_the_polkit_actions_are_the_verbs() -> None:
    """packaging/io.github.iyclo1.policy declares one action per verb the daemon asks
    polkit about, and grants none of them by default to anyone but an admin."""
    root = ET.parse(DBUS_DIR.parent / "packaging" / "io.github.iyclo1.policy").getroot()
    actions = {a.get("id"): a for a in root.iter("action")}
    assert set(actions) == {a.action_id for a in Access if a is not Access.READ}
    for action in actions.values():
        defaults = action.find("defaults")
        assert defaults is not None
        assert defaults.findtext("allow_any") == "no"
        assert defaults.findtext("allow_inactive") == "no"
        assert defaults.findtext("allow_active") == "auth_admin_keep"
