"""invocation.py: the script's process group is killed while it may live, never after."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from faas_supervisor import invocation as invocation_module
from faas_supervisor.config import FunctionConfig, WatchdogSettings
from faas_supervisor.errors import ScriptFailed, ScriptTimeout
from faas_supervisor.invocation import Invocation, Removals, Runtime
from faas_supervisor.watchdog.server import Watchdog

pytestmark = pytest.mark.timeout(60)  # real child processes


def make_invocation(tmp_path: Path, script: str) -> Invocation:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "script.sh"
    path.write_text(script)
    return Invocation(Runtime(config=FunctionConfig(), script=path, base_env={},
                              tmp_dir=tmp_path))


def test_extra_variables_never_pass_for_the_runtimes_own(tmp_path: Path) -> None:
    """Only an invocation sets INPUT_FILE_PATH, EVENT...: the same names among the extra
    variables are dropped, the others kept, and the shared part is never changed."""
    runtime = Runtime(config=FunctionConfig(), script=tmp_path / "script.sh",
                      base_env={"PATH": "/bin", "EVENT": "from the watchdog's own"},
                      tmp_dir=tmp_path)
    extra = {"INPUT_FILE_PATH": "/etc/passwd", "TMP_OUTPUT_DIR": "/", "Http_Event": "1"}
    assert runtime.script_environment(extra) == {"PATH": "/bin", "Http_Event": "1"}
    assert runtime.script_environment({"Http_A": "2"}) == {"PATH": "/bin", "Http_A": "2"}
    assert runtime.script_environment() == {"PATH": "/bin"}


def test_close_after_the_script_ended_kills_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the group is killed and reaped, its id may be reused by a new group (another
    invocation's script, say): a later close() must leave that one alone."""
    invocation = make_invocation(tmp_path, "echo hi\n")
    assert asyncio.run(invocation.run_script({"PATH": os.environ["PATH"]})) == 0
    killed: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: killed.append(pgid))
    invocation.close()
    assert killed == []
    assert not invocation.input_dir.exists() and not invocation.output_dir.exists()


def test_close_while_the_script_runs_kills_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    invocation = make_invocation(tmp_path, f'sleep 1000 &\necho "$$ $!" > "{pids}"\nwait\n')

    async def close_while_running() -> int:
        running = asyncio.ensure_future(invocation.run_script({"PATH": os.environ["PATH"]}))
        while not (pids.exists() and pids.read_text().endswith("\n")):
            await asyncio.sleep(0.02)  # the script writes the file when it runs
        invocation.close()
        try:
            return await asyncio.wait_for(running, 20)
        except Exception as exc:  # ScriptFailed: killed by SIGKILL
            return getattr(exc, "exit_status", -1)

    assert asyncio.run(close_while_running()) == 128 + 9
    for pid in (int(p) for p in pids.read_text().split()):
        # SIGKILL is sent; the process may take a moment to be gone (or a zombie).
        deadline = time.monotonic() + 10
        while not _gone(pid):
            assert time.monotonic() < deadline, f"process {pid} still runs"
            time.sleep(0.02)  # /proc has no event to await


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_removal_goes_on_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    """The watchdog's handler is cancelled when its client leaves, maybe while its folder
    still waits for a free worker thread: the folder must go all the same, and be gone
    once close_all() returns (the watchdog's shutdown)."""
    first, second = (make_invocation(tmp_path / name, "echo hi\n") for name in ("a", "b"))
    removals = Removals(workers=1)
    release = threading.Event()
    remove = first.remove
    first.remove = (  # type: ignore[method-assign]
        lambda deep=True: (release.wait(), remove(deep))[-1])

    async def main() -> None:
        busy = asyncio.ensure_future(removals.close(first))  # takes the only worker
        closing = asyncio.ensure_future(removals.close(second))
        await asyncio.sleep(0)  # both queued
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        release.set()
        await busy

    asyncio.run(main())
    removals.close_all()
    assert not first.input_dir.exists() and not first.output_dir.exists()
    assert not second.input_dir.exists() and not second.output_dir.exists()


def test_a_failed_removal_reaches_its_caller_and_the_next_removals_still_run(
    tmp_path: Path,
) -> None:
    """An exception in one removal must not end its worker thread: with one worker, the
    folders queued after it would never go, and their handlers wait forever."""
    broken, first, second = (make_invocation(tmp_path / name, "echo hi\n")
                             for name in ("broken", "a", "b"))

    def fail(deep: bool = True) -> bool:
        raise OSError("disk gone")

    broken.remove = fail  # type: ignore[method-assign]
    removals = Removals(workers=1)

    async def main() -> list[BaseException | None]:
        results = await asyncio.wait_for(asyncio.gather(
            removals.close(broken), removals.close(first), removals.close(second),
            return_exceptions=True), 20)
        return list(results)

    try:
        failed, *rest = asyncio.run(main())
    finally:
        removals.close_all()
    assert isinstance(failed, OSError) and str(failed) == "disk gone"
    assert rest == [None, None]
    assert not first.input_dir.exists() and not first.output_dir.exists()
    assert not second.input_dir.exists() and not second.output_dir.exists()


def _held(invocation: Invocation) -> tuple[threading.Event, threading.Event]:
    """Makes `invocation`'s removal wait for the second event; the first is set once it
    has started."""
    started, release = threading.Event(), threading.Event()
    remove = invocation.remove
    invocation.remove = (  # type: ignore[method-assign]
        lambda deep=True: (started.set(), release.wait(20), remove(deep))[-1])
    return started, release


def test_outcomes_done_while_the_loop_is_busy_come_in_one_wake_up(tmp_path: Path) -> None:
    """Under load the loop is busy when removals end: those that end before it takes the
    first outcome come with it, one call into the loop (the CPU per invocation at c16)."""
    invocations = [make_invocation(tmp_path / name, "echo hi\n") for name in "abc"]
    removals = Removals(workers=1)
    delivered, takes = 0, 0
    all_delivered = threading.Event()
    deliver, take = removals._deliver, removals._take

    def counted_deliver(*args: Any) -> None:
        nonlocal delivered
        deliver(*args)
        delivered += 1
        if delivered == len(invocations):
            all_delivered.set()

    def counted_take(loop: asyncio.AbstractEventLoop) -> None:
        nonlocal takes
        takes += 1
        take(loop)

    removals._deliver = counted_deliver  # type: ignore[method-assign]
    removals._take = counted_take  # type: ignore[method-assign]

    async def main() -> None:
        closing = [asyncio.ensure_future(removals.close(i)) for i in invocations]
        await asyncio.sleep(0)  # all queued
        assert all_delivered.wait(20)  # the loop's thread busy meanwhile
        await asyncio.wait_for(asyncio.gather(*closing), 20)

    try:
        asyncio.run(main())
    finally:
        removals.close_all()
    assert takes == 1
    for invocation in invocations:
        assert not invocation.input_dir.exists() and not invocation.output_dir.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_slow_removal_holds_up_no_outcome_but_its_own(tmp_path: Path, workers: int) -> None:
    """A removal done is answered at once, whatever removal comes after it in the queue
    (one thread) or runs beside it (two): a slow one (a tree a script left, a disk that
    discards slowly) must not keep other invocations counted in flight."""
    blocker, fast, slow = (make_invocation(tmp_path / name, "echo hi\n") for name in "abc")
    blocker_started, release_blocker = _held(blocker)
    slow_started, release_slow = _held(slow)
    removals = Removals(workers=workers)

    async def main() -> None:
        first = asyncio.ensure_future(removals.close(blocker))
        await asyncio.to_thread(blocker_started.wait, 20)
        # One thread: the fast one first, then the slow one (answered one by one, not
        # once both are done). Two: the slow one first, the fast one beside it.
        order = (fast, slow) if workers == 1 else (slow, fast)
        closing = {i: asyncio.ensure_future(removals.close(i)) for i in order}
        await asyncio.sleep(0)  # queued behind the blocker
        release_blocker.set()
        await asyncio.wait_for(first, 20)
        await asyncio.to_thread(slow_started.wait, 20)
        # The slow one is under way and held: the fast one is answered all the same (well
        # before the hold would end by itself).
        await asyncio.wait_for(closing[fast], 5)
        assert not closing[slow].done()
        release_slow.set()
        await asyncio.wait_for(closing[slow], 20)

    try:
        asyncio.run(main())
    finally:
        release_blocker.set()
        release_slow.set()
        removals.close_all()
    for invocation in (blocker, fast, slow):
        assert not invocation.input_dir.exists() and not invocation.output_dir.exists()


def test_a_folder_a_script_left_things_in_holds_up_no_other_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walking what a script left (its length is the script's to choose) happens in a
    thread of its own: the other invocations' folders go on being removed, and their
    handlers answered, meanwhile."""
    messy, tidy = (make_invocation(tmp_path / name, "echo hi\n") for name in "ab")
    for number in range(3):
        (messy.output_dir / f"left-{number}").write_text("x")
    walking, release = threading.Event(), threading.Event()
    rmtree = shutil.rmtree

    def held_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        walking.set()
        release.wait(20)
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", held_rmtree)
    removals = Removals()

    async def main() -> None:
        walked = asyncio.ensure_future(removals.close(messy))
        other = asyncio.ensure_future(removals.close(tidy))
        await asyncio.to_thread(walking.wait, 20)
        await asyncio.wait_for(other, 5)  # while the walk is held (for up to 20 s)
        assert not walked.done()
        release.set()
        await asyncio.wait_for(walked, 20)

    try:
        asyncio.run(main())
    finally:
        release.set()
        removals.close_all()
    for invocation in (messy, tidy):
        assert not invocation.input_dir.exists() and not invocation.output_dir.exists()
    assert [t for t in threading.enumerate() if t.name.startswith("removals-")] == []


def test_a_lone_invocations_leftovers_are_walked_off_the_loops_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone in flight, an invocation's layout is removed in the loop's thread; what its
    script left is walked in a worker thread, never in the loop's (a request coming
    meanwhile would wait for the walk)."""
    invocation = make_invocation(tmp_path, "echo hi\n")
    (invocation.output_dir / "left").write_text("x")
    walkers: list[threading.Thread] = []
    rmtree = shutil.rmtree

    def recorded(path: Any, *args: Any, **kwargs: Any) -> None:
        walkers.append(threading.current_thread())
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", recorded)
    watchdog = Watchdog(invocation.runtime, WatchdogSettings())

    async def main() -> None:
        watchdog.inflight.add(invocation)  # alone
        await asyncio.wait_for(watchdog._close(invocation), 20)

    try:
        asyncio.run(main())
    finally:
        watchdog.removals.close_all()
    assert walkers and threading.main_thread() not in walkers
    assert not invocation.input_dir.exists() and not invocation.output_dir.exists()


def test_leftovers_are_walked_all_the_same_when_no_thread_can_start_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit on threads: the walk is done by the thread that found the leftovers, and
    the next ones too; nothing waits on a queue no thread reads, and close_all ends."""
    messy = [make_invocation(tmp_path / name, "echo hi\n") for name in "ab"]
    for invocation in messy:
        (invocation.output_dir / "left").write_text("x")
    start = threading.Thread.start

    def no_deep_thread(thread: threading.Thread) -> None:
        if thread.name == "removals-deep":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", no_deep_thread)
    removals = Removals()

    async def main() -> None:
        for invocation in messy:
            await asyncio.wait_for(removals.close(invocation), 20)

    try:
        asyncio.run(main())
    finally:
        removals.close_all()
    for invocation in messy:
        assert not invocation.input_dir.exists() and not invocation.output_dir.exists()


def test_a_removal_asked_for_after_close_all_runs_at_once(tmp_path: Path) -> None:
    """A late handler (after the watchdog's shutdown stopped the threads) must still see
    its folder removed, not queued for threads that are gone."""
    early, late = (make_invocation(tmp_path / name, "echo hi\n") for name in ("a", "b"))
    removals = Removals(workers=2)

    async def main() -> None:
        await removals.close(early)  # the threads started
        await asyncio.to_thread(removals.close_all)
        await asyncio.wait_for(removals.close(late), 20)

    asyncio.run(main())
    assert not early.input_dir.exists() and not early.output_dir.exists()
    assert not late.input_dir.exists() and not late.output_dir.exists()
    assert [t for t in threading.enumerate() if t.name.startswith("removals-")] == []


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_invocation_makes_two_folders_and_a_log_with_no_name(tmp_path: Path) -> None:
    invocation = make_invocation(tmp_path / "tmp", "echo out; echo err >&2\n")
    base = invocation.input_dir.name.removesuffix("-input")
    assert _entries(tmp_path / "tmp") == [f"{base}-input", f"{base}-output", "script.sh"]
    assert asyncio.run(invocation.run_script({"PATH": os.environ["PATH"]})) == 0
    assert invocation.script_log is not None
    assert os.pread(invocation.script_log, 100, 0) == b"out\nerr\n"
    assert _entries(invocation.input_dir) == [] and _entries(invocation.output_dir) == []
    invocation.close()
    assert invocation.script_log is None
    assert _entries(tmp_path / "tmp") == ["script.sh"]


def test_without_o_tmpfile_the_log_is_made_and_unlinked_before_the_script_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """overlayfs before Linux 6.6 refuses O_TMPFILE: a named file, unlinked at once."""
    real_open = os.open

    def no_tmpfile(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_tmpfile)
    monkeypatch.setattr(invocation_module, "_no_tmpfile", False)
    invocation = make_invocation(tmp_path / "tmp", "echo hi\n")
    assert invocation_module._no_tmpfile  # the next ones go straight to the fallback
    base = invocation.input_dir.name.removesuffix("-input")
    # The log's name is gone already, and it was never in the invocation's folders.
    assert _entries(tmp_path / "tmp") == [f"{base}-input", f"{base}-output", "script.sh"]
    assert _entries(invocation.input_dir) == []
    assert asyncio.run(invocation.run_script({"PATH": os.environ["PATH"]})) == 0
    assert invocation.script_log is not None
    assert os.pread(invocation.script_log, 100, 0) == b"hi\n"
    invocation.close()
    assert _entries(tmp_path / "tmp") == ["script.sh"]


@pytest.mark.parametrize("replaced", ["input", "output"])
def test_a_folder_replaced_by_a_link_is_removed_not_what_it_names(
    tmp_path: Path, replaced: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    invocation = make_invocation(tmp_path / "tmp", "echo hi\n")
    folder = invocation.input_dir if replaced == "input" else invocation.output_dir
    folder.rmdir()
    folder.symlink_to(outside)
    invocation.close()
    assert _entries(tmp_path / "tmp") == ["script.sh"]
    assert (outside / "keep.txt").read_text() == "keep"


def test_what_a_script_leaves_in_its_folders_goes_with_them(tmp_path: Path) -> None:
    invocation = make_invocation(
        tmp_path / "tmp",
        'mkdir -p "$TMP_OUTPUT_DIR/a/b" "$TMP_INPUT_DIR/c"; touch "$TMP_OUTPUT_DIR/a/b/f" '
        '"$TMP_INPUT_DIR/c/g" "$TMP_INPUT_DIR/h"; ln -s / "$TMP_OUTPUT_DIR/root"\n',
    )
    env = {"PATH": os.environ["PATH"], "TMP_INPUT_DIR": str(invocation.input_dir),
           "TMP_OUTPUT_DIR": str(invocation.output_dir)}
    assert asyncio.run(invocation.run_script(env)) == 0
    invocation.close()
    assert _entries(tmp_path / "tmp") == ["script.sh"]


def test_a_failed_close_of_the_log_still_removes_the_folders_and_closes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() may report an error (an NFS flush) and still free the number: the folders
    go all the same, and a second remove() closes nothing (the number may be reused)."""
    invocation = make_invocation(tmp_path / "tmp", "echo hi\n")
    log = invocation.script_log
    real_close = os.close
    closed: list[int] = []

    def failing_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)
        if fd == log:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "close", failing_close)
    invocation.remove()  # the log was read already: its close's error is nobody's
    assert _entries(tmp_path / "tmp") == ["script.sh"]
    invocation.remove()
    assert closed.count(log) == 1


class _SlowOrphans:
    """Orphans whose sweep waits for the test: a window to cancel run_script in."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def kill_all(self) -> None:
        self.entered.set()
        await self.release.wait()


def test_a_cancellation_during_the_clean_up_is_not_lost(tmp_path: Path) -> None:
    """`run`'s SIGTERM cancels it; coming while the script's orphans are swept (after a
    normal exit), it must still end the invocation (exit 143), not be swallowed by the
    clean-up and let the job go on to its stage-out."""
    script = tmp_path / "script.sh"
    script.write_text("exit 0\n")

    async def scenario() -> None:
        orphans = _SlowOrphans()
        runtime = Runtime(config=FunctionConfig(), script=script, base_env={},
                          tmp_dir=tmp_path, orphans=orphans)  # type: ignore[arg-type]
        invocation = Invocation(runtime)
        task = asyncio.create_task(invocation.run_script({"PATH": os.environ["PATH"]}))
        await orphans.entered.wait()
        task.cancel()  # delivered at the task's next step, before the sweep below ends
        orphans.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        invocation.close()

    asyncio.run(scenario())


def test_an_output_replaced_after_its_listing_is_not_uploaded(tmp_path: Path) -> None:
    """A process the script left (the watchdog stops those once the answer is sent) puts
    a link, a FIFO, or nothing where a listed output was: the upload follows no link and
    waits on no FIFO; each is skipped with a warning, the regular one uploaded."""
    from faas_supervisor.config import ProviderConfig, StoragePath
    from faas_supervisor.parsers.event import Event
    from faas_supervisor.storage_providers import build_providers

    store = tmp_path / "store"
    (store / "out").mkdir(parents=True)  # its bucket
    secret = tmp_path / "secret.txt"
    secret.write_text("not the script's\n")
    config = FunctionConfig(
        providers={"local.files": ProviderConfig("local", "files", {"path": str(store)})},
        outputs=(StoragePath("local.files", "out/res"),),
    )
    script = tmp_path / "script.sh"
    script.write_text("true\n")
    invocation = Invocation(Runtime(config=config, script=script, base_env={},
                                    tmp_dir=tmp_path, providers=build_providers(config)))
    out = invocation.output_dir
    for name in ("kept", "link", "fifo", "gone"):
        (out / name).write_text(f"{name}\n")
    (out / "sub").mkdir()
    (out / "sub" / "secret.txt").write_text("the script's\n")
    outputs = invocation.collect_outputs()
    (out / "link").unlink()
    (out / "link").symlink_to(secret)
    (out / "fifo").unlink()
    os.mkfifo(out / "fifo")
    (out / "gone").unlink()
    (out / "sub").rename(out / "sub.old")  # a link in place of a folder above an output
    (out / "sub").symlink_to(tmp_path)
    asyncio.run(asyncio.wait_for(invocation.stage_out(Event(kind="empty"), outputs), 20))
    assert sorted(p.name for p in (store / "out" / "res").iterdir()) == ["kept"]
    assert (store / "out" / "res" / "kept").read_text() == "kept\n"
    text = invocation.log.text().decode()
    for line in ("output link skipped: a symbolic link", "output fifo skipped: a special file",
                 "output gone skipped: gone", "output sub/secret.txt skipped: not the file"):
        assert line in text, text
    invocation.close()


def _timed(tmp_path: Path, script: str, exec_timeout: float) -> Invocation:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "script.sh"
    path.write_text(script)
    return Invocation(Runtime(config=FunctionConfig(), script=path, base_env={},
                              tmp_dir=tmp_path, exec_timeout=exec_timeout))


def test_a_script_that_ended_as_its_time_ran_out_keeps_its_own_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline passing just as the script exited (not yet reaped): a review found a
    504 that said both "past exec_timeout" and X-Exit-Code 0. Its own status stands."""

    @contextlib.asynccontextmanager
    async def ran_out(_delay: float) -> Any:
        yield
        raise TimeoutError  # as asyncio.timeout would, had it fired at that moment

    monkeypatch.setattr(invocation_module.asyncio, "timeout", ran_out)
    invocation = _timed(tmp_path, "exit 3\n", 5.0)
    with pytest.raises(ScriptFailed):
        asyncio.run(invocation.run_script({"PATH": os.environ["PATH"]}))
    assert invocation.outcome.exit_code == 3
    ended = _timed(tmp_path, "exit 0\n", 5.0)
    assert asyncio.run(ended.run_script({"PATH": os.environ["PATH"]})) == 0


def test_a_script_killed_at_its_timeout_reports_the_kill(tmp_path: Path) -> None:
    invocation = _timed(tmp_path, "exec sleep 30\n", 0.2)
    with pytest.raises(ScriptTimeout):
        asyncio.run(invocation.run_script({"PATH": os.environ["PATH"]}))
    assert invocation.outcome.exit_code == -9


def test_a_step_cut_by_abort_and_cancelled_again_keeps_the_aborts_error(
    tmp_path: Path
) -> None:
    """A step abort() cut that is still cleaning up when its task is cancelled a second
    time (the watchdog's server giving up on the handler past ABORT_GRACE): the
    cancellation goes on, and the invocation's failure is the abort's, not none (its log
    line said `error=None` for an invocation cut twice)."""
    from faas_supervisor.errors import ShuttingDown

    invocation = make_invocation(tmp_path, "echo\n")
    shutting_down = ShuttingDown("the watchdog is shutting down")

    async def main() -> None:
        started, cleaning = asyncio.Event(), asyncio.Event()

        async def step() -> None:
            with invocation.abortable():
                try:
                    started.set()
                    await asyncio.Event().wait()
                finally:
                    cleaning.set()
                    await asyncio.Event().wait()  # a clean-up that does not end

        task = asyncio.create_task(step())
        await started.wait()
        invocation.abort(shutting_down)
        await cleaning.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert invocation.outcome.error is shutting_down
    invocation.close()
