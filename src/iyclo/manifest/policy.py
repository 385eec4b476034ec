"""Rules that span fields, and the daemon's policy on isolation-weakening settings.

Structuring checks each value alone; these checks need the whole manifest (two
containers with one name, one host port published twice) or the daemon's
configuration (``privileged`` is refused unless the operator allowed it).
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from attrs import frozen

from iyclo.errors import InvalidError
from iyclo.manifest.model import (
    Container,
    Job,
    Manifest,
    Network,
    Pod,
    Secret,
    UserNamespace,
    every_container,
)
from iyclo.manifest.values import (
    ENV_RE,
    RESERVED_LABEL_KEYS,
    RESERVED_LABEL_PREFIXES,
    SECCOMP_KEYWORDS,
    AbsPath,
    Capability,
    VolumeName,
    normalise_path,
    path_problem,
    reserved_label,
    show,
)

# Podman 4.3's default capability set, measured: CapEff 0x800405fb in a container.
PODMAN_DEFAULT_CAPS = frozenset(
    "CHOWN DAC_OVERRIDE FOWNER FSETID KILL NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID "
    "SYS_CHROOT".split()
)
# Dropped from every container unless listed in capAdd: three of Podman's defaults few
# services need (changing capability sets and file capabilities, chroot), and three that
# Docker, Podman < 4 and some containers.conf files still grant.
ALWAYS_DROPPED_CAPS = frozenset("SETPCAP SETFCAP SYS_CHROOT NET_RAW MKNOD AUDIT_WRITE".split())
# capAdd may ask for these without the daemon's permission: Docker's default set.
ADDABLE_CAPS = PODMAN_DEFAULT_CAPS | {"NET_RAW", "MKNOD", "AUDIT_WRITE"}

# Measured: `podman pod start` in a unit with its own mount namespace mounts the pod's
# network namespace under /run/netns inside that namespace only; Podman's API and CLI then
# fail on the pod ("unknown FS magic on /run/netns/...").
_MOUNT_NAMESPACE = (
    "it gives podman a private mount namespace, which hides the pod's network namespace "
    "(/run/netns) from Podman's API"
)

# Directives refused in the `systemd` block, each with the reason an operator needs.
REFUSED_SYSTEMD_DIRECTIVES: dict[str, str] = {
    "protectHome": _MOUNT_NAMESPACE,
    "privateTmp": _MOUNT_NAMESPACE,
    "protectKernelModules": _MOUNT_NAMESPACE,
    "protectKernelLogs": _MOUNT_NAMESPACE,
    "readOnlyPaths": _MOUNT_NAMESPACE,
    "inaccessiblePaths": _MOUNT_NAMESPACE,
    "privateNetwork": "it would cut podman off from the network it sets up for the pod",
    "privateDevices": "podman and runc need /dev to create container devices",
    "privateUsers": "podman needs the host's user namespace to set up containers",
    "protectSystem": "podman writes under /var/lib/containers and /etc/containers",
    "protectControlGroups": "podman creates the containers' cgroups",
    # measured: "netavark: Sysctl error: IO Error: Read-only file system"
    "protectKernelTunables": (
        "netavark writes /proc/sys (e.g. ip_forward) to set up the pod network"
    ),
    "restrictNamespaces": "containers are namespaces; podman must create them",
    "noNewPrivileges": "it would apply to podman, conmon and runc; use security.noNewPrivileges",
    "systemCallFilter": "it would filter podman itself; use security.seccompProfile",
    "capabilityBoundingSet": "podman needs its capabilities; use security.capDrop",
    "dynamicUser": "rootful podman must run as root",
    "user": "rootful podman must run as root; use a container's user instead",
    "memoryDenyWriteExecute": "it breaks runtimes that map executable memory",
    "rootDirectory": "podman must see the host's filesystem",
    # measured: "runc create failed: ... sethostname: operation not permitted" (systemd's
    # seccomp filter is inherited by runc and the containers)
    "protectHostname": "it forbids sethostname(), which runc calls to name each container",
}


MAX_ID = 2**32 - 1  # (uid_t)-1 is "no ID"; a mapping must stay below it


@frozen
class IdRange:
    """Host user and group IDs, ``start`` to ``start + size - 1``."""

    start: int
    size: int

    @property
    def last(self) -> int:
        return self.start + self.size - 1

    def contains(self, other: IdRange) -> bool:
        return self.start <= other.start and other.last <= self.last

    def __str__(self) -> str:
        return f"{self.start}-{self.last}"


# Where pods' user namespaces map by default: 2^31 to 2^32-2. Nothing allocates there by
# default: Debian's users are 1000-59999 and its /etc/subuid ranges 100000-600100000
# (login.defs SUB_UID_MIN/MAX), systemd-nspawn's container ranges 524288-1879048191 and its
# foreign range 2147352576-2147418111, SSSD's ID mapping 200000-2000200000. It is the
# range podman-run(1) gives as the example for rootful `--userns=auto` (containers:
# 2147483647:2147483648), started one ID later so that it is 64K-aligned: with hostIds
# that are multiples of 65536, container ID = host ID mod 65536.
# systemd warns that some programs mishandle IDs of 2^31 and above as signed: they show
# only on files in a pod's volumes, which the pod owns anyway.
DEFAULT_USERNS_RANGES = (IdRange(2**31, 2**31 - 1),)


@frozen
class Policy:
    """What the daemon's operator allows beyond the secure defaults.

    Read from the daemon's config file (JSON keys are the camelCase field names, under
    "policy") and its flags; see ``iyclo.config``.
    """

    allow_privileged: bool = False
    allow_unconfined_seccomp: bool = False
    allow_host_network: bool = False
    # Not /opt: root-run software lives there, and a pod that may write its files owns
    # the host the next time that software runs.
    bind_mount_allow: tuple[AbsPath, ...] = (AbsPath("/srv"), AbsPath("/var/lib/iyclo/volumes"))
    seccomp_profile_allow: tuple[AbsPath, ...] = (
        AbsPath("/etc/iyclo/seccomp"), AbsPath("/var/lib/iyclo/seccomp"),
    )  # fmt: skip
    cap_add_allow: tuple[Capability, ...] = ()
    userns_ranges: tuple[IdRange, ...] = DEFAULT_USERNS_RANGES
    shared_volumes: tuple[VolumeName, ...] = ()
    # Reserved label keys, or prefixes ending in ".", manifests may set anyway: e.g.
    # "io.containers.autoupdate" for `podman auto-update`. Never iyclo's own.
    label_keys_allow: tuple[str, ...] = ()
    # Where a secret's `file` may be: a manifest names a file, iyclod (root) reads it and
    # hands it to a container, so anywhere else would let a manifest read any host file.
    secret_file_allow: tuple[AbsPath, ...] = (AbsPath("/etc/iyclo/secrets"),)
    # Where a container's `envFiles` may be, for the same reason.
    env_file_allow: tuple[AbsPath, ...] = (AbsPath("/etc/iyclo/env"),)


DEFAULT_POLICY = Policy()
UNRESTRICTED = Policy(
    allow_privileged=True,
    allow_unconfined_seccomp=True,
    allow_host_network=True,
    bind_mount_allow=(AbsPath("/"),),
    seccomp_profile_allow=(AbsPath("/"),),
    cap_add_allow=(Capability("ALL"),),
    userns_ranges=(IdRange(1, MAX_ID - 1),),
    label_keys_allow=(*RESERVED_LABEL_KEYS, *RESERVED_LABEL_PREFIXES),
    secret_file_allow=(AbsPath("/"),),
    env_file_allow=(AbsPath("/"),),
)
"""For re-reading stored manifests: they were checked when applied, and an operator who
tightens the policy later must not make the daemon unable to stop or remove them."""


def policy_problems(policy: Policy) -> list[str]:
    """What is wrong in an operator's policy beyond its types, path-qualified under "policy"."""
    found = []
    for index, id_range in enumerate(policy.userns_ranges):
        where = f"policy.usernsRanges[{index}]"
        if id_range.start <= 0:
            found.append(f"{where}.start: {id_range.start} must be greater than 0 (root)")
        if id_range.size <= 0:
            found.append(f"{where}.size: {id_range.size} must be greater than 0")
        elif id_range.start + id_range.size > MAX_ID:
            found.append(f"{where}.size: host IDs {id_range} go beyond {MAX_ID - 1}")
    return found


def bare_capability(name: str) -> str:
    """``CAP_NET_RAW`` and ``NET_RAW`` are one capability; Podman takes either."""
    return name.removeprefix("CAP_")


def _under(path: str, roots: Iterable[str]) -> bool:
    """Whether normalised ``path`` is ``root`` or below it, comparing whole components."""
    for root in roots:
        base = normalise_path(root)
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return True
    return False


def _roots_problem(path: str, roots: tuple[str, ...], *, profile: bool) -> str | None:
    problem = path_problem(path)
    if problem is not None:
        return problem
    if _under(normalise_path(path), roots):
        return None
    allowed = ", ".join(roots)
    if profile:
        return f"{show(path)} is outside the allowed profile directories ({allowed})"
    return f"host path {show(path)} is outside the allowed roots ({allowed})"


class _Refused(Exception):
    """A host path refused by ``_walk``; the message names it."""


def _walk(path: str, *, profile: bool) -> int | None:
    """Open every component of ``path`` from / without following a symbolic link.

    Each component is opened with O_PATH | O_NOFOLLOW relative to its parent's descriptor,
    so what is checked is what the kernel walks, with no second lookup by name. A missing
    tail is not a problem for a bind mount: there is nothing to follow yet, Podman reports
    it, and the check before every start sees it if it appears. Returns the O_PATH
    descriptor of the path (the caller closes it), None for a missing bind-mount source.
    """
    parts = [part for part in path.split("/") if part not in ("", ".")]
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags | os.O_DIRECTORY)
    returned = False
    try:
        walked = ""
        for index, part in enumerate(parts):
            walked += "/" + part
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if profile:
                    raise _Refused(f"{show(path)} does not exist") from None
                return None  # the parent's descriptor is closed below
            except NotADirectoryError:
                parent = show(walked.rsplit("/", 1)[0])
                raise _Refused(
                    f"{show(path)} goes through {parent}, which is not a directory"
                ) from None
            except OSError as exc:
                raise _Refused(f"cannot check {show(walked)}: {exc.strerror or exc}") from None
            os.close(fd)
            fd = child
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) and index == len(parts) - 1:
                raise _Refused(f"{show(path)} is a symbolic link")
            if stat.S_ISLNK(mode):
                raise _Refused(f"{show(path)} goes through the symbolic link {show(walked)}")
        mode = os.fstat(fd).st_mode
        if profile and not stat.S_ISREG(mode):
            raise _Refused(f"{show(path)} is not a regular file")
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
            raise _Refused(f"{show(path)} is a device node")
        returned = True
        return fd
    finally:
        if not returned:  # refused, failed or missing: the descriptor is not the caller's
            os.close(fd)


def _walk_problem(path: str, *, profile: bool) -> str | None:
    """``_walk``'s refusal of ``path``, or None."""
    try:
        fd = _walk(path, profile=profile)
    except _Refused as exc:
        return str(exc)
    if fd is not None:
        os.close(fd)
    return None


def check_host_path(
    path: str, allowed_roots: Iterable[str], *, profile: bool = False
) -> str | None:
    """Why the host path ``path`` must not be bind-mounted (or, with ``profile``, read as
    a seccomp profile), or None; the message names the path, the caller adds the field's.

    A text check is not enough: a container that can write under an allowed root can
    plant ``/srv/x/root -> /``, and a later mount of ``/srv/x/root`` would give another
    pod the host's ``/``. So, after the text checks (absolute, no "..", under a root once
    normalised), every component is opened from / without following symbolic links, and
    a symbolic link anywhere in the path is refused, naming it; so are device nodes. A
    profile must exist and be a regular file; a missing bind-mount source is left to Podman.

    Validation runs it once (``host_problems``, from ``load_manifest``). The link can be
    planted after validation, so it must run again before every start: the core calls
    ``host_problems`` before each start it makes, and the units it writes run
    ``python -m iyclo.manifest.hostcheck`` as ExecStartPre= for the starts systemd makes on
    its own (a job's timer, Restart=). A window remains between that check and runc's own
    lookup, small but real; only mounting by file descriptor would close it.
    """
    roots = tuple(allowed_roots)
    return _roots_problem(path, roots, profile=profile) or _walk_problem(path, profile=profile)


@frozen
class HostPath:
    """A host path a manifest hands to runc: a bind-mount source or a seccomp profile."""

    where: str
    path: str
    profile: bool


def host_paths(manifest: Manifest) -> list[HostPath]:
    """Every host path of a manifest with its field, in manifest order: what
    ``host_problems`` checks here and the units' ExecStartPre= checks again."""
    found: list[HostPath] = []
    for prefix, container in every_container(manifest):
        for vi, volume in enumerate(container.volumes):
            if volume.source.startswith("/"):
                found.append(HostPath(f"{prefix}.volumes[{vi}].source", volume.source, False))
        profile = container.security.seccomp_profile
        if profile is not None and profile not in SECCOMP_KEYWORDS:
            found.append(HostPath(f"{prefix}.security.seccompProfile", profile, True))
    return found


def host_problems(manifest: Manifest, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """Every host path of a manifest checked on this host (``check_host_path``),
    path-qualified: the daemon's half of validation, and the core's check before a start."""
    found: list[str] = []
    for host_path in host_paths(manifest):
        roots = policy.seccomp_profile_allow if host_path.profile else policy.bind_mount_allow
        problem = check_host_path(host_path.path, roots, profile=host_path.profile)
        if problem is not None:
            found.append(f"{host_path.where}: refused: {problem}")
    return found


SECRET_MAX_BYTES = 512000
"""Podman refuses a secret of 512000 bytes or more ("secret data must be larger than 0 and
less than 512000 bytes", measured on 4.3); refused here first, naming the field."""
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
"""Where systemd puts the credentials of iyclod's unit (``LoadCredential=``, ``SetCredential=``)."""


def secret_source(secret: Secret, environ: Mapping[str, str] | None = None) -> str:
    """The host path a secret's value is read from: its file, or its credential in the
    daemon's credentials directory; ValueError (naming the source) when there is none."""
    if secret.file is not None:
        return secret.file
    directory = (os.environ if environ is None else environ).get(CREDENTIALS_ENV, "")
    if not directory.startswith("/"):
        raise ValueError(
            f"credential {show(secret.credential)} cannot be read: iyclod was started "
            f"without credentials (${CREDENTIALS_ENV} is not set; see LoadCredential= in "
            "its unit)"
        )
    return f"{directory.rstrip('/')}/{secret.credential}"


def _secret_fd(secret: Secret, policy: Policy) -> int:
    """An O_PATH descriptor of a secret's regular file, found without following a symbolic
    link, under the operator's roots (a credential: in systemd's credentials directory);
    ValueError naming the file when it is refused."""
    path = secret_source(secret)
    if secret.file is not None:
        _refuse_outside(path, policy.secret_file_allow, "secret")
    return _regular_fd(path, "a secret")


def _refuse_outside(path: str, roots: tuple[AbsPath, ...], what: str) -> None:
    """ValueError unless ``path`` is a plain absolute path under one of ``roots``."""
    problem = path_problem(path)
    if problem is None and not _under(normalise_path(path), roots):
        allowed = ", ".join(roots) or "none"
        problem = f"{show(path)} is outside the allowed {what} directories ({allowed})"
    if problem is not None:
        raise ValueError(problem)


def _regular_fd(path: str, what: str) -> int:
    """An O_PATH descriptor of the regular file ``path`` of 1 to ``SECRET_MAX_BYTES - 1``
    bytes, reached without a symbolic link; ValueError naming it otherwise."""
    try:
        fd = _walk(path, profile=True)
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    assert fd is not None  # profile=True: a missing file is refused
    size = os.fstat(fd).st_size
    if size == 0 or size >= SECRET_MAX_BYTES:
        os.close(fd)
        raise ValueError(
            f"{show(path)} is {size} bytes; {what} must have 1 to {SECRET_MAX_BYTES - 1} "
            "(Podman's limit)"
        )
    return fd


def _read_fd(fd: int, where: str) -> bytes:
    """The file behind an O_PATH descriptor (closed here), read through /proc: no second
    lookup by name, so no link planted in between is followed."""
    try:
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise InvalidError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    with os.fdopen(reader, "rb") as handle:
        return handle.read(SECRET_MAX_BYTES)


def parse_env_file(text: bytes, where: str) -> dict[str, str]:
    """NAME=VALUE lines, as Podman's ``--env-file`` reads them (blank lines and lines
    starting with # skipped, the value as written); InvalidError naming the first bad
    line. A line without "=" (Podman's "take it from my environment") means iyclod's own
    environment here, so it is refused."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidError(f"{where}: refused: it is not UTF-8 text") from None
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not ENV_RE.fullmatch(name):
            raise InvalidError(f"{where}: refused: line {number} is not NAME=VALUE")
        if "\x00" in value:
            raise InvalidError(f"{where}: refused: line {number} holds a NUL byte")
        found[name] = value
    return found


def env_file_sources(manifest: Manifest) -> list[tuple[str, str, str]]:
    """(field path, container, path) of every env file, in manifest order."""
    return [
        (f"{prefix}.envFiles[{fi}]", str(c.name), str(path))
        for prefix, c in every_container(manifest)
        for fi, path in enumerate(c.env_files)
    ]


def read_env_file(where: str, path: str, policy: Policy) -> dict[str, str]:
    """An env file's variables, found and read as a secret file is (under
    ``envFileAllow``, no symbolic link, a regular file); InvalidError naming the field."""
    try:
        _refuse_outside(path, policy.env_file_allow, "env file")
        fd = _regular_fd(path, "an env file")
    except ValueError as exc:
        raise InvalidError(f"{where}: refused: {exc}") from None
    return parse_env_file(_read_fd(fd, where), where)


def env_file_problems(manifest: Manifest, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """Every env file of a manifest checked (and parsed) on this host, path-qualified."""
    found: list[str] = []
    for where, _, path in env_file_sources(manifest):
        try:
            read_env_file(where, path, policy)
        except InvalidError as exc:
            found.append(exc.message)
    return found


def _secret_where(where: str, secret: Secret) -> str:
    """The field path of a secret's source, from the secret's own (``where``)."""
    return f"{where}.{'file' if secret.file is not None else 'credential'}"


def secret_problems(manifest: Manifest, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """Every secret source of a manifest checked on this host, path-qualified: under the
    allowed roots, no symbolic link, a regular file of a size Podman takes.

    Checked at validation and apply only, not before each start (``host_problems``): the
    value was handed to Podman at apply, and a start never reads the file again.
    """
    found: list[str] = []
    for prefix, container in every_container(manifest):
        for si, secret in enumerate(container.secrets):
            if (secret.file is None) == (secret.credential is None):
                continue  # refused by ``problems`` already
            try:
                os.close(_secret_fd(secret, policy))
            except ValueError as exc:
                where = _secret_where(f"{prefix}.secrets[{si}]", secret)
                found.append(f"{where}: refused: {exc}")
    return found


def read_secret(where: str, secret: Secret, policy: Policy) -> bytes:
    """A secret's value, read through the descriptor the checks opened (no second lookup by
    name, so no link planted in between is followed); InvalidError naming the field
    (``where`` is the secret's path, e.g. "containers[0].secrets[1]")."""
    where = _secret_where(where, secret)
    try:
        fd = _secret_fd(secret, policy)
    except ValueError as exc:
        raise InvalidError(f"{where}: refused: {exc}") from None
    data = _read_fd(fd, where)
    if not data:
        raise InvalidError(f"{where}: refused: it is empty")
    return data


def ranges_overlap(a: IdRange, b: IdRange) -> bool:
    """Whether two ID ranges share an ID: two pods mapped onto one ID are one user on the
    host, each able to read and signal what the other's processes and files own."""
    return a.start <= b.last and b.start <= a.last


def userns_range(userns: UserNamespace) -> IdRange:
    return IdRange(userns.host_id, userns.size)


def userns_conflict(
    userns: UserNamespace | None, others: Mapping[str, UserNamespace | None]
) -> str | None:
    """The line refusing ``userns`` because another pod's or job's range overlaps it.

    For the core at apply, with every other stored manifest's ``userns`` by name (the
    manifest's own name left out, so an update can keep its range); validation alone
    cannot know the other pods.
    """
    if userns is None:
        return None
    mine = userns_range(userns)
    for name, theirs in sorted(others.items()):
        if theirs is not None and ranges_overlap(mine, userns_range(theirs)):
            return (
                f"userns.hostId: refused: host IDs {mine} overlap those of {show(name)} "
                f"({userns_range(theirs)})"
            )
    return None


VOLUME_OWNER_LABEL = "io.github.iyclo.owner"
"""The label the core sets on a named volume it creates: the name of the pod or job."""


@frozen
class VolumeClaim:
    """A named volume a manifest mounts, and whether the operator shares it."""

    where: str
    name: str
    shared: bool


def volume_claims(manifest: Manifest, policy: Policy = DEFAULT_POLICY) -> list[VolumeClaim]:
    """Each named volume of a manifest, checked against ``policy.sharedVolumes``.

    Validation can only say which names are shared; who owns the others is Podman's
    state, so the core checks it at apply with ``volume_problem``.
    """
    shared: set[str] = set(policy.shared_volumes)
    return [
        VolumeClaim(f"{prefix}.volumes[{vi}].source", v.source, v.source in shared)
        for prefix, c in every_container(manifest)
        for vi, v in enumerate(c.volumes)
        if not v.source.startswith("/")
    ]


def volume_problem(
    claim: VolumeClaim, owner_name: str, labels: Mapping[str, str] | None
) -> str | None:
    """The line refusing a named volume at apply, or None.

    ``labels`` are the existing volume's (None: it does not exist). A manifest may use a
    volume the operator shares, one it owns (``VOLUME_OWNER_LABEL`` is its name), or a new
    one, which the core must then create itself with that label *before* creating the
    containers: Podman would create it without labels, and nobody would own it.
    """
    if claim.shared or labels is None:
        return None
    owner = labels.get(VOLUME_OWNER_LABEL)
    if owner == owner_name:
        return None
    if owner is None:
        return (
            f"{claim.where}: refused: volume {show(claim.name)} was not made by iyclo for "
            f"{show(owner_name)} and the daemon does not share it (policy.sharedVolumes)"
        )
    return (
        f"{claim.where}: refused: volume {show(claim.name)} belongs to {show(owner)} and the "
        "daemon does not share it (policy.sharedVolumes)"
    )


def _container_problems(prefix: str, container: Container, policy: Policy) -> Iterator[str]:
    sec = container.security
    if sec.privileged and not policy.allow_privileged:
        yield (
            f"{prefix}.security.privileged: refused: "
            "the daemon does not allow privileged containers"
        )
    if sec.seccomp_profile == "unconfined" and not policy.allow_unconfined_seccomp:
        yield (
            f'{prefix}.security.seccompProfile: refused: "unconfined" is not allowed by the daemon'
        )
    elif sec.seccomp_profile is not None and sec.seccomp_profile not in SECCOMP_KEYWORDS:
        # A custom profile can allow everything, so it comes only from where the operator
        # keeps reviewed ones.
        roots = policy.seccomp_profile_allow
        # With / allowed (the stored manifests' policy) every path is under a root, and a
        # stored profile from before ".." was refused must not make its pod unreadable:
        # check_host_path still refuses it before a start.
        if "/" not in map(normalise_path, roots):
            problem = _roots_problem(sec.seccomp_profile, roots, profile=True)
            if problem is not None:
                yield f"{prefix}.security.seccompProfile: refused: {problem}"
    allowed_caps = {bare_capability(c) for c in policy.cap_add_allow}
    for index, cap in enumerate(sec.cap_add):
        bare = bare_capability(cap)
        if (bare == "ALL" or bare not in ADDABLE_CAPS) and not (
            bare in allowed_caps or "ALL" in allowed_caps
        ):
            yield (
                f'{prefix}.security.capAdd[{index}]: refused: "{cap}" is beyond Docker\'s '
                "default capability set and not allowed by the daemon"
            )
    if container.command == () and container.args is None:
        yield f"{prefix}.command: must not be empty"
    if container.healthcheck is not None and not container.healthcheck.command:
        yield f"{prefix}.healthcheck.command: must not be empty"
    for index, volume in enumerate(container.volumes):
        if volume.source.startswith("/"):
            problem = _roots_problem(volume.source, policy.bind_mount_allow, profile=False)
            if problem is not None:
                yield f"{prefix}.volumes[{index}].source: refused: {problem}"
    res = container.resources
    if res.cpus is not None and res.cpus <= 0:
        yield f"{prefix}.resources.cpus: {res.cpus} must be greater than 0"
    if res.pids is not None and res.pids <= 0:
        yield f"{prefix}.resources.pids: {res.pids} must be greater than 0"
    yield from _secret_container_problems(prefix, container)
    targets = Counter(v.target for v in container.volumes) + Counter(container.tmpfs)
    targets += Counter(s.target for s in container.secrets if s.target is not None)
    for target, count in sorted(targets.items()):
        if count > 1:
            yield f"{prefix}.volumes: {show(target)} is mounted more than once"


def _secret_container_problems(prefix: str, container: Container) -> Iterator[str]:
    """One source and one delivery per secret, names and variables unique."""
    names = Counter(s.name for s in container.secrets)
    envs = Counter(s.env for s in container.secrets if s.env is not None)
    for index, secret in enumerate(container.secrets):
        where = f"{prefix}.secrets[{index}]"
        if names[secret.name] > 1:
            yield f"{where}.name: {show(secret.name)} is used by more than one secret"
        if secret.file is None and secret.credential is None:
            yield f'{where}: needs one of "file" or "credential"'
        elif secret.file is not None and secret.credential is not None:
            yield f'{where}.credential: give either "file" or "credential", not both'
        if secret.env is None and secret.target is None:
            yield f'{where}: needs one of "env" or "target"'
        elif secret.env is not None and secret.target is not None:
            yield f'{where}.target: give either "env" or "target", not both'
        if secret.env is not None:
            if secret.env in container.env:
                yield f"{where}.env: {show(secret.env)} is also set in the container's env"
            elif envs[secret.env] > 1:
                yield f"{where}.env: {show(secret.env)} is set by more than one secret"
            for key in ("mode", "uid", "gid"):
                if getattr(secret, key) is not None:
                    yield f'{where}.{key}: only a secret with a "target" file has one'
        for key in ("uid", "gid"):
            value = getattr(secret, key)
            if value is not None and not 0 <= value < MAX_ID:
                yield f"{where}.{key}: {value} is not in 0-{MAX_ID - 1}"


def _label_path(key: str) -> str:
    """The JSON path of a label, as the converter writes paths."""
    if key.isidentifier() and key.isascii() and len(key) <= 64:
        return f"labels.{key}"
    return f"labels[{show(key)}]"


def _init_container_problems(prefix: str, container: Container) -> list[str]:
    """An init container runs to completion before the others: nothing that serves."""
    given = {"ports": container.ports, "healthcheck": container.healthcheck,
             "startupCheck": container.startup_check}  # fmt: skip
    return [
        f"{prefix}.{field}: an init container runs to completion, it has no {field}"
        for field, value in given.items()
        if value
    ]


def problems(manifest: Manifest, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """Every cross-field problem of a structurally valid manifest, path-qualified."""
    if isinstance(manifest, Network):
        return []  # its name and flags are all checked by their types
    found: list[str] = []
    if not manifest.containers:
        found.append("containers: a pod needs at least one container")
    names = Counter(c.name for _, c in every_container(manifest))
    for prefix, container in every_container(manifest):
        if prefix.startswith("init"):
            found.extend(_init_container_problems(prefix, container))
        if names[container.name] > 1:
            found.append(
                f"{prefix}.name: {show(container.name)} is used by more than one container"
            )
        found.extend(_container_problems(prefix, container, policy))
    published: dict[tuple[str, int, str], str] = {}
    for ci, container in enumerate(manifest.containers):
        for pi, port in enumerate(container.ports):
            if port.host_port is None:
                continue
            key = (port.host_ip or "0.0.0.0", port.host_port, port.protocol)
            where = f"containers[{ci}].ports[{pi}]"
            if key in published:
                found.append(
                    f"{where}.hostPort: {port.host_port}/{port.protocol} is already published "
                    f"by {published[key]}"
                )
            else:
                published[key] = where
    for label in manifest.labels:
        reason = reserved_label(label, policy.label_keys_allow)
        if reason is not None:
            found.append(f"{_label_path(label)}: refused: {show(label)} {reason}")
    if manifest.network == "host" and not policy.allow_host_network:
        found.append('network: refused: "host" is not allowed by the daemon')
    if manifest.network != "bridge" and any(c.ports for c in manifest.containers):
        found.append(f'network: ports cannot be published with network "{manifest.network}"')
    if manifest.userns is not None:
        userns = manifest.userns
        if userns.host_id <= 0:
            found.append(
                f"userns.hostId: {userns.host_id} must be greater than 0 "
                "(container root would be host root)"
            )
        if userns.size <= 0:
            found.append(f"userns.size: {userns.size} must be greater than 0")
        elif userns.host_id > 0 and userns.host_id + userns.size > MAX_ID:
            found.append(f"userns.size: host IDs {userns_range(userns)} go beyond {MAX_ID - 1}")
        elif userns.host_id > 0 and not any(
            allowed.contains(userns_range(userns)) for allowed in policy.userns_ranges
        ):
            # a range the operator did not set aside can be a real user's: hostId 1000
            # makes container root the host's first user
            allowed_text = ", ".join(map(str, policy.userns_ranges)) or "none"
            found.append(
                f"userns.hostId: refused: host IDs {userns_range(userns)} are outside the "
                f"ranges the daemon allows ({allowed_text})"
            )
    sd = manifest.systemd
    if sd.io_weight is not None and not 1 <= sd.io_weight <= 10000:
        found.append(f"systemd.ioWeight: {sd.io_weight} is not in 1-10000")
    if sd.cpu_weight is not None and not 1 <= sd.cpu_weight <= 10000:
        found.append(f"systemd.cpuWeight: {sd.cpu_weight} is not in 1-10000")
    if sd.tasks_max is not None and sd.tasks_max <= 0:
        found.append(f"systemd.tasksMax: {sd.tasks_max} must be greater than 0")
    if isinstance(manifest, Pod) and manifest.restart.limit < 0:
        found.append(f"restart.limit: {manifest.restart.limit} must not be negative")
    found.extend(_dependency_problems(manifest))
    if isinstance(manifest, Pod):
        found.extend(_attachment_problems(manifest))
    return found


def _attachment_problems(manifest: Pod) -> Iterator[str]:
    """What one pod can say wrong about its ``networks``; whether each is applied, and
    internal, is the apply's to find (``core.networks``)."""
    if manifest.networks and manifest.network != "bridge":
        yield f'networks: a pod on network "{manifest.network}" cannot join networks'
    seen: set[str] = set()
    for i, attachment in enumerate(manifest.networks):
        if attachment.name in seen:
            yield f"networks[{i}].name: {show(attachment.name)} is listed more than once"
        seen.add(attachment.name)
        aliases = Counter(attachment.aliases)
        for ai, alias in enumerate(attachment.aliases):
            if aliases[alias] > 1:
                yield f"networks[{i}].aliases[{ai}]: {show(alias)} is listed more than once"


def _dependency_problems(manifest: Pod | Job) -> Iterator[str]:
    """What one manifest can say wrong about its ``dependsOn``; names that are not there
    and cycles through other pods are the apply's to find (``core.ordering``)."""
    seen: set[str] = set()
    for i, dependency in enumerate(manifest.depends_on):
        where = f"dependsOn[{i}]"
        if dependency.pod == manifest.name:
            yield f"{where}.pod: {show(dependency.pod)} cannot depend on itself"
        elif dependency.pod in seen:
            yield f"{where}.pod: {show(dependency.pod)} is listed more than once"
        seen.add(dependency.pod)
        if isinstance(manifest, Job) and dependency.condition != "started":
            yield (
                f"{where}.condition: a job's run can only need a pod started (systemd orders "
                f"the run after the pod's unit); {show(dependency.condition)} is for pods"
            )
