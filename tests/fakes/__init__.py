"""Fakes of the services iyclo talks to: real D-Bus services on a private bus.

``dbus_session.PrivateBus`` runs the bus, ``systemd.FakeSystemd`` plays systemd
on it, ``fixtures`` wires both into pytest.
"""
