"""What iyclod promises on every front, defined once: the events and the methods.

Stdlib only, so the CLI's clients can decode what the daemon sends without importing
the daemon.
"""
