"""The folder store (storage_providers/local.py): uploads of one key at once."""

import asyncio
import os
from pathlib import Path

from faas_supervisor.config import ProviderConfig
from faas_supervisor.storage_providers.local import LocalProvider


async def test_concurrent_uploads_of_one_key_all_succeed_and_leave_one_whole_object(
    tmp_path: Path,
) -> None:
    # Jobs of one service write the same output key at once (the catalogue's job-flood):
    # each upload's partial file must be its own, or one renames another's away.
    store = LocalProvider(ProviderConfig("minio", "default", {"path": str(tmp_path / "store")}))
    sources = []
    for i in range(16):
        src = tmp_path / f"src{i}"
        src.write_bytes(bytes([i]) * (1 << 20))
        sources.append(src)
    for _ in range(5):  # a few rounds: the threads' interleaving varies from run to run
        await asyncio.gather(*(store.upload(src, "bucket", "out/result") for src in sources))
    stored = (tmp_path / "store" / "bucket" / "out" / "result").read_bytes()
    assert stored in {src.read_bytes() for src in sources}
    assert sorted(p.name for p in (tmp_path / "store" / "bucket" / "out").iterdir()) == ["result"]


async def test_a_name_of_255_bytes_is_written_through_a_temporary_name_that_fits(
    tmp_path: Path,
) -> None:
    """An output named with NAME_MAX bytes (two-byte characters here) is valid, and so
    must be the temporary name beside it: `.NAME.<hex>.partial` was too long (ENAMETOOLONG,
    a 'cannot write' storage failure, exit 3), and so for WebDAV, Onedata and Rucio
    downloads (`.NAME.partial`). Found by a review."""
    from faas_supervisor.storage_providers import NAME_MAX, partial_path

    name = "é" * 127 + "x"  # 255 bytes
    assert len(name.encode()) == NAME_MAX
    for suffix, prefix in ((".partial", "."), (".0123456789abcdef.rucio.upload", "")):
        temp = partial_path(tmp_path / name, suffix, prefix)
        assert len(os.fsencode(temp.name)) == NAME_MAX and temp.parent == tmp_path
        assert temp.name.startswith(prefix + "é") and temp.name.endswith(suffix)
        temp.write_bytes(b"fits")  # the file system takes it
    assert partial_path(tmp_path / "short", ".partial").name == ".short.partial"
    store = LocalProvider(ProviderConfig("minio", "default", {"path": str(tmp_path / "store")}))
    (tmp_path / "src").write_bytes(b"data")
    await store.upload(tmp_path / "src", "bucket", f"out/{name}")
    assert [p.name for p in (tmp_path / "store/bucket/out").iterdir()] == [name]
