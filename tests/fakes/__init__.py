"""Fakes of the services iyclo talks to, around the one real ``Service``.

``dbus_session.PrivateBus`` runs a bus, ``systemd.FakeSystemd`` plays systemd on it (a
real D-Bus service), ``podman.FakePodman`` plays Podman's REST API and runs the
containers the fake systemd's units name, ``fixtures`` wires them into pytest (``core``:
the real service over both). There is no fake of the service itself.
"""
