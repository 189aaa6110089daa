"""A version id becomes a folder of the local cache, so what is not one is refused before it is a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.artifacts import ArtifactStore, check_version_id
from common.errors import ModelError


@pytest.mark.parametrize("bad", [None, "", "../etc", "v1/../../x", ".hidden", 42])
def test_materialize_refuses_what_is_not_a_version_id(store_conn, tmp_path: Path, bad) -> None:
    with pytest.raises(ModelError, match="is not a model version id"):
        ArtifactStore(store_conn).materialize(bad, tmp_path)  # type: ignore[arg-type]
    assert not (tmp_path / "models").exists()


def test_real_version_ids_pass() -> None:
    assert check_version_id("v0123456789abcdef0123") == "v0123456789abcdef0123"
