"""The folder store (storage_providers/local.py): uploads of one key at once."""

import asyncio
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
