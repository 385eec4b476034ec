"""podman."""
