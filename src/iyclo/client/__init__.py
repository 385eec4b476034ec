"""Clients of the daemon, for the CLI and for other programs: lean imports only."""
