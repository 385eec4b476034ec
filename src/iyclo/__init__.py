"""iyclo: Podman runs the containers, systemd supervises them, iyclo keeps the desired state."""

__version__ = "0.1.0"
