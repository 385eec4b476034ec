"""Env files on the one service, over the fakes: read at apply under the operator's
envFileAllow, their variables in the containers' specs (never in the manifest, the store
or a read), an edited file shown by diff and rolled out by apply."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from iyclo.core.redact import redact_manifest
from iyclo.errors import InvalidError
from iyclo.manifest.convert import load_manifest
from iyclo.manifest.policy import Policy, parse_env_file
from tests.fakes.fixtures import Core

VALUE = "s3cret-from-env-file"


@pytest.fixture
def env_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "env"
    directory.mkdir()
    (directory / "app.env").write_text(f"# the app's\nDB_PASSWORD={VALUE}\n\nMODE=a=b\n")
    return directory


@pytest.fixture
def policy(env_dir: Path) -> Policy:
    return Policy(env_file_allow=(str(env_dir),))  # type: ignore[arg-type]


def pod(env_dir: Path, *files: str) -> dict[str, Any]:
    return {"apiVersion": "iyclo/v1", "kind": "Pod", "name": "app", "containers": [
        {"name": "main", "image": "localhost/busybox:latest", "command": ["sleep", "1d"],
         "env": {"MODE": "from-env"},
         "envFiles": [str(env_dir / f) for f in files or ("app.env",)]}]}  # fmt: skip


def specs(core: Core) -> list[dict[str, Any]]:
    return [c[2][0] for c in core.podman.calls["create_pod_with_containers"]]


def test_env_files_are_name_value_lines() -> None:
    assert parse_env_file(b"# c\n\nA=1\nB= x y \nC=\n", "f") == {"A": "1", "B": " x y ", "C": ""}
    for text, line in ((b"A=1\nnope\n", 2), (b"1A=x\n", 1)):
        with pytest.raises(InvalidError, match=f"^f: refused: line {line} is not NAME=VALUE$"):
            parse_env_file(text, "f")


def test_env_files_are_checked_on_the_host(env_dir: Path, policy: Policy, tmp_path: Path) -> None:
    (tmp_path / "outside.env").write_text("A=1\n")
    os.symlink(env_dir / "app.env", env_dir / "link.env")
    manifest = pod(env_dir, "app.env", "link.env", "missing.env")
    manifest["containers"][0]["envFiles"].append(str(tmp_path / "outside.env"))
    with pytest.raises(InvalidError) as info:
        load_manifest(manifest, policy)
    assert [d.split(": refused: ")[0] for d in info.value.details] == [
        f"containers[0].envFiles[{i}]" for i in (1, 2, 3)
    ]
    assert "is a symbolic link" in info.value.details[0]
    assert "does not exist" in info.value.details[1]
    assert "outside the allowed env file directories" in info.value.details[2]


async def test_values_reach_the_container_and_no_read(core: Core, env_dir: Path) -> None:
    result = await core.service.apply(pod(env_dir))
    assert result.generation == 1
    (spec,) = specs(core)
    assert spec["environment"] == {"DB_PASSWORD": VALUE, "MODE": "from-env"}  # env wins
    reads = [await core.service.status("app"), await core.service.manifest("app"),
             await core.service.history("app"), await core.service.list_all(),
             await core.service.diff(pod(env_dir)),
             redact_manifest(await core.service.manifest("app"))]  # fmt: skip
    assert VALUE not in json.dumps(reads)
    assert VALUE not in (core.store.state_dir / "state.json").read_text()
    assert await core.service.diff(pod(env_dir)) == ""


async def test_an_edited_file_shows_in_diff_and_rolls_out(core: Core, env_dir: Path) -> None:
    await core.service.apply(pod(env_dir))
    (env_dir / "app.env").write_text("DB_PASSWORD=rotated\n")
    path = env_dir / "app.env"
    assert await core.service.diff(pod(env_dir)) == f"containers[0].envFiles[0]: {path} (changed)\n"
    assert "envFiles" not in await core.service.diff(pod(env_dir), trusted=False)
    result = await core.service.apply(pod(env_dir))
    assert (result.generation, result.changed) == (2, True)
    assert specs(core)[-1]["environment"]["DB_PASSWORD"] == "rotated"
    assert await core.service.diff(pod(env_dir)) == ""
    assert (await core.service.apply(pod(env_dir))).changed is False


async def test_a_bad_env_file_fails_the_apply_and_makes_nothing(core: Core, env_dir: Path) -> None:
    (env_dir / "bad.env").write_text("just words\n")
    with pytest.raises(InvalidError, match=r"^containers\[0\]\.envFiles\[0\]: refused: line 1"):
        await core.service.apply(pod(env_dir, "bad.env"))
    assert core.podman.pods == {}
