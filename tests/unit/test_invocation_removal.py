"""An invocation's folders removed whatever the script did to their modes
(invocation._remove_folders), as a user that is not root: root needs no rights on a folder
to empty it, any other user does."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from faas_supervisor.invocation import _give_back

REPO = Path(__file__).resolve().parents[2]
UID = 1000

# Run as the unprivileged user: folders made as the script makes them, then removed.
REMOVAL = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from faas_supervisor.invocation import _remove_folders

    base = sys.argv[1] + "/faas-x"
    inp, out = base + "-input", base + "-output"
    os.mkdir(inp, 0o700)
    os.mkdir(out, 0o700)
    Path(out, "f").write_text("x")
    os.makedirs(out + "/d/e")
    Path(out, "d/e/f").write_text("x")
    os.chmod(out + "/d/e", 0o000)
    os.chmod(out + "/d", 0o000)
    os.chmod(out, 0o000)  # three levels, each without a right
    os.makedirs(inp + "/s")
    Path(inp, "s/f").write_text("x")
    Path(inp, "body").write_text("x")
    os.chmod(inp + "/s", 0o500)  # its file cannot be unlinked
    os.chmod(inp, 0o600)  # listed, not searched
    assert _remove_folders(inp, out, Path(inp, "body")) is True
    print(sorted(os.listdir(sys.argv[1])))
""")


def test_folders_without_their_owners_rights_are_removed_by_a_user_not_root(
    tmp_path: Path,
) -> None:
    """rmtree(ignore_errors=True) left them: a folder `chmod 000` cannot be listed, one
    `chmod 500` cannot be emptied, by its owner. Found by a review (`run` as uid 1000)."""
    as_user: list[str] = []
    folder = tmp_path
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            print("skipped: setpriv (util-linux) is needed to run as a user not root")
            pytest.skip("setpriv (util-linux) is needed to run as a user not root")
        as_user = [setpriv, f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
        # pytest's own folders are root's alone: one in /tmp, the user's.
        folder = Path(tempfile.mkdtemp(prefix="faas-removal-"))
        os.chown(folder, UID, UID)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run([*as_user, sys.executable, "-c", REMOVAL, str(folder)],
                                env=env, capture_output=True, timeout=30)
    finally:
        if as_user:
            shutil.rmtree(folder)  # root: whatever the modes
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"[]\n"


def test_rights_are_given_back_never_through_a_link(tmp_path: Path) -> None:
    """A link in place of a folder (a script's, or one swapped in meanwhile) is not
    followed: the folder it names, elsewhere, keeps its mode."""
    top = tmp_path / "faas-x-output"
    top.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub").chmod(0o000)
    elsewhere.chmod(0o500)
    (top / "link").symlink_to(elsewhere)
    try:
        for path in (top / "link", top / "link" / "sub", elsewhere, tmp_path):
            assert _give_back(str(top), str(path)) is False, path
        assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o500
        assert stat.S_IMODE((elsewhere / "sub").lstat().st_mode) == 0o000
        # A folder of its own, under it, is given its rights back; once only.
        (top / "real").mkdir(0o000)
        assert _give_back(str(top), str(top / "real")) is True
        assert stat.S_IMODE((top / "real").stat().st_mode) == 0o700
        assert _give_back(str(top), str(top / "real")) is False
    finally:
        elsewhere.chmod(0o700)
        (elsewhere / "sub").chmod(0o700)
