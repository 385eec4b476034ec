"""Secret values at apply: read from their sources, told apart without being kept.

A manifest names where each secret's value is (``policy.read_secret`` reads it); the core
hands the value to Podman as a secret made for the generation (``steps.Steps``) and keeps
nothing of it but a *keyed* digest.

Why a keyed digest (HMAC-SHA256 under a random key of this host, ``KEY_FILE``, 0600 in
the daemon's state directory) and not the value or a plain hash: re-applying a manifest
after its secret file changed must roll out a new generation, so the change has to be
seen, and the record's digest is what apply compares. That digest is also what every
reader gets (``get``, ``history``, the Podman pod's hash label). A plain SHA-256 of a
password lets anyone who reads it test guesses offline, in bulk; an HMAC under a key only
root can read cannot be tested without the key, and tells a reader only that *something*
changed. The value itself is never written to the store, a label, an event or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from iyclo.errors import StoreError
from iyclo.manifest.model import Job, Pod, Secret, every_container
from iyclo.manifest.policy import Policy, read_env_file, read_secret

KEY_FILE = "secret-digest.key"
KEY_BYTES = 32

SecretRef = tuple[str, str]
"""(container, secret) names in the manifest: what a value is for, in every generation."""


@attrs.frozen
class SecretValues:
    """The values of a manifest's secrets, and their keyed digest (empty: no secrets)."""

    values: Mapping[SecretRef, bytes] = attrs.field(repr=False, factory=dict)
    fingerprint: str = ""
    env: Mapping[str, Mapping[str, str]] = attrs.field(repr=False, factory=dict)
    """Each container's variables from its env files (``Container.env_files``)."""
    env_digests: Mapping[str, str] = attrs.field(factory=dict)
    """Each env file's keyed digest by its field path ("containers[0].envFiles[0]"):
    what ``diff`` compares an edited file against."""

    def rollout_digest(self, manifest_digest: str) -> str:
        """The digest a generation is recorded with: the manifest's alone when it has no
        secrets (so records from before secrets keep theirs), else both together."""
        if not self.fingerprint:
            return manifest_digest
        return hashlib.sha256(f"{manifest_digest}:{self.fingerprint}".encode()).hexdigest()


def host_key(state_dir: Path) -> bytes:
    """This host's digest key, made on first use (random, 0600, never leaves the host)."""
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror or exc}") from None
    else:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(key) != KEY_BYTES:
        raise StoreError(f"{path} is not a key of {KEY_BYTES} bytes; remove it to make a new one")
    return key


def fingerprint(key: bytes, values: Mapping[SecretRef, bytes]) -> str:
    """HMAC-SHA256 of every (container, secret, value), in a form no two sets share
    (each part length-prefixed); empty for no secrets."""
    if not values:
        return ""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for (container, name), value in sorted(values.items()):
        for part in (container.encode(), name.encode(), value):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
    return mac.hexdigest()


EnvFileSource = tuple[str, str, str]
"""(the env file's field path, its container's name, its path)."""
SecretSource = tuple[str, str, Secret]
"""(the secret's field path, its container's name, the secret) of one secret to read."""


def secret_sources(manifest: Pod | Job) -> list[SecretSource]:
    return [
        (f"{prefix}.secrets[{si}]", str(c.name), s)
        for prefix, c in every_container(manifest)
        for si, s in enumerate(c.secrets)
    ]


@attrs.frozen
class SecretReader:
    """Reads secret values as the daemon's policy allows and digests them with the host key.

    Blocking (file reads): the core calls it in a worker thread.
    """

    policy: Policy
    state_dir: Path

    def read(
        self, sources: Iterable[SecretSource], env_files: Iterable[EnvFileSource] = ()
    ) -> SecretValues:
        """Every secret of ``sources`` and every env file; InvalidError naming the first one
        refused. The env files' contents count in the fingerprint as the secrets' do, so an
        edited file rolls out a new generation."""
        values = {(c, str(s.name)): read_secret(where, s, self.policy) for where, c, s in sources}
        files = {where: (c, path) for where, c, path in env_files}
        if not values and not files:
            return SecretValues()
        key = host_key(self.state_dir)
        env: dict[str, dict[str, str]] = {}
        digests: dict[str, str] = {}
        for where, (container, path) in files.items():
            variables = read_env_file(where, path, self.policy)
            env.setdefault(container, {}).update(variables)
            text = "".join(f"{k}={v}\n" for k, v in variables.items()).encode()
            digests[where] = fingerprint(key, {(where, path): text})
        every = {**values, **{(where, "envFile"): d.encode() for where, d in digests.items()}}
        return SecretValues(values, fingerprint(key, every), env, digests)
