"""The folder store (`<root>/<bucket>/<key>`) as S3 objects: blocking calls, run in threads.

* A key is a path in its bucket's folder; one whose segment is empty, `.`, `..` or starts
  with `.` (names this store keeps for itself: partial uploads), or that resolves outside
  the bucket (a symbolic link), is an S3 error, never a file elsewhere. A key ending in
  `/` is a folder (MinIO's folder markers): a folder with nothing in it is listed as one.
* An object is written to a hidden temporary file of its bucket (`.s3-tmp/`) and renamed
  into place (its folders made then): readers, the listing and the input watcher see it
  whole or not at all, once; a body refused half-way leaves nothing, folder included.
* What S3 keeps besides the bytes (ETag, Content-Type, `x-amz-meta-*`) is an extended
  attribute of the file (`user.faas.s3`), set before the rename, so it moves with it;
  it names the size and time it describes. A file put in the folder by other means (or
  on a file system without user attributes) has none: its ETag is then derived from its
  size, time and inode, its type `binary/octet-stream`.
* A bucket's creation time is the same attribute of its folder, set when the folder is
  made: its time (mtime) moves with every name added or removed at its top, S3's
  CreationDate does not. A folder without one (made before this was recorded, or by other
  means) has its folder's time at its first listing recorded, and keeps that.
* Multipart uploads live in `<root>/.s3-uploads/<id>/` until completed or aborted, or
  expired: UPLOAD_EXPIRY after their last part (MinIO expires stale uploads likewise).
* Only this process writes the hidden names: what it finds of them when made (a
  controller killed mid-PUT) is stale, and is removed then.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any

from faas_supervisor.controller.names import (
    MAX_KEY_BYTES,
    NAME_MAX,
    bucket_problem,
    folder_key_problem,
)
from faas_supervisor.controller.s3.digits import decimal
from faas_supervisor.controller.s3.errors import S3Error

ATTRIBUTE = "user.faas.s3"
DEFAULT_TYPE = "binary/octet-stream"  # what S3 answers for an object put without a type
UPLOADS = ".s3-uploads"
TEMP_PREFIX = ".s3-tmp-"
STAGING = ".s3-tmp"  # in each bucket: bodies being received, renamed into place when whole
MIN_PART = 5 << 20  # every part but the last, as S3 requires
MAX_PARTS = 10000
COPY_CHUNK = 64 << 20
LAST = "\U0010ffff"  # above every character: `prefix + LAST` is after every key under it
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
# A write's condition (If-Match, If-None-Match): given the object the write would
# replace (None: there is none), it raises the S3Error that refuses the write.
WriteCheck = Callable[["ObjectInfo | None"], None]
UPLOAD_EXPIRY = 7 * 24 * 3600  # seconds without a new part before an upload is dropped


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float
    etag: str  # unquoted
    content_type: str = DEFAULT_TYPE
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    content_type: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int
    modified: float
    path: Path


@dataclass
class Page:
    """One page of a listing: objects, common prefixes, and where the next starts."""

    objects: list[ObjectInfo]
    prefixes: list[str]
    truncated: bool
    next_after: str


class Objects:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads = self.root / UPLOADS
        # Held by what puts an object in a bucket and by DeleteBucket's check and removal:
        # an object answered 200 is never removed with a bucket found empty just before.
        # (All of it runs in threads, asyncio.to_thread: a thread lock, not an asyncio one.)
        self._lock = threading.Lock()
        self._remove_stale()

    def _remove_stale(self) -> None:
        """Temporary files left by an earlier process gone, folders it was removing (see
        _set_aside), and expired uploads."""
        for entry in os.scandir(self.root):
            if entry.name.startswith(TEMP_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(Path(entry.path, STAGING), ignore_errors=True)
        if self.uploads.is_dir():
            for folder in self.uploads.glob(f"{TEMP_PREFIX}*"):
                shutil.rmtree(folder, ignore_errors=True)
            for temp in self.uploads.glob(f"*/{TEMP_PREFIX}*"):
                temp.unlink(missing_ok=True)
        self.expire_uploads()

    def expire_uploads(self, now: float | None = None) -> None:
        """Uploads without a new part for UPLOAD_EXPIRY (a part's rename into its folder
        renews the folder's time) removed, as if aborted."""
        limit = (time.time() if now is None else now) - UPLOAD_EXPIRY
        try:
            entries = list(os.scandir(self.uploads))
        except FileNotFoundError:
            return
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < limit:
                    _remove(_set_aside(Path(entry.path)))

    # ---- buckets ---------------------------------------------------------------------

    def buckets(self) -> list[tuple[str, float]]:
        """Each bucket's name and creation time (seconds since the epoch)."""
        found = []
        for entry in os.scandir(self.root):
            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                try:
                    found.append((entry.name, _created(entry.path)))
                except FileNotFoundError:
                    continue  # deleted while listed
        return sorted(found)

    def bucket(self, bucket: str) -> Path:
        """The bucket's folder; NoSuchBucket unless it exists."""
        path = self._bucket_path(bucket)
        if not path.is_dir() or path.is_symlink():
            raise no_such_bucket(bucket)
        return path

    def _bucket_path(self, bucket: str) -> Path:
        problem = bucket_problem(bucket)
        if problem is not None:
            raise S3Error("InvalidBucketName", f"The bucket name {problem}", f"/{bucket}")
        return self.root / bucket

    def create_bucket(self, bucket: str) -> None:
        """The bucket's folder made, its creation time recorded (every bucket the
        controller makes is made here: the S3 endpoint's, the bucket API's, a service's)."""
        path = self._bucket_path(bucket)
        try:
            path.mkdir()
        except FileExistsError:
            raise S3Error(
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already "
                "own it.",
                f"/{bucket}",
            ) from None
        with contextlib.suppress(FileNotFoundError):  # deleted at once: nothing to record
            _created(path)

    def delete_bucket(self, bucket: str, with_objects: bool = False) -> None:
        """The bucket gone, with its multipart uploads (aborted: none completes into a
        bucket of the same name made later) and the bodies being received (their puts
        answer NoSuchBucket). S3's DeleteBucket refuses a bucket holding a file; the
        bucket API's (`with_objects`, as the manager's) takes its objects too. One delete
        for both, under the lock the puts take: they do not interleave. The folders go
        out of sight under the lock, and are removed after it (see _set_aside)."""
        with self._lock:
            path = self.bucket(bucket)
            if not with_objects and _holds_files(path):
                raise S3Error(
                    "BucketNotEmpty", "The bucket you tried to delete is not empty", f"/{bucket}"
                )
            gone = [_set_aside(self.uploads / u.upload_id) for u in self.list_uploads(bucket)]
            gone.append(_set_aside(path))  # empty folders, objects, bodies being received
        for folder in gone:
            _remove(folder)

    # ---- keys and objects ------------------------------------------------------------

    def path(self, bucket: str, key: str) -> Path:
        """Where `key` of `bucket` is on disk; an S3 error for a key that cannot be one."""
        base = self.bucket(bucket)
        resource = f"/{bucket}/{key}"
        if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise S3Error("KeyTooLongError", "Your key is too long", resource)
        relative = key[:-1] if key.endswith("/") else key
        # Each segment is a file or folder name here: longer than a file system takes
        # (ENAMETOOLONG) it is the key's fault, not the server's.
        if any(len(s.encode("utf-8", "surrogatepass")) > NAME_MAX for s in relative.split("/")):
            raise S3Error("KeyTooLongError", f"A segment of the key is over {NAME_MAX} bytes",
                          resource)
        problem = folder_key_problem(key)
        if problem is not None:
            raise S3Error("InvalidArgument", f"The key {problem}", resource)
        path = (base / relative).resolve()
        if not path.is_relative_to(base) or path == base:
            raise S3Error("InvalidArgument", "The key is outside its bucket", resource)
        return base / relative

    def current(self, bucket: str, key: str) -> ObjectInfo | None:
        """`key`'s object, or None when there is none."""
        try:
            return self.info(bucket, key)
        except S3Error as error:
            if error.code != "NoSuchKey":
                raise
            return None

    def info(self, bucket: str, key: str) -> ObjectInfo:
        path = self.path(bucket, key)
        try:
            stat = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            stat = None
        if key.endswith("/"):
            if stat is None or not path.is_dir() or path.is_symlink():
                raise _no_such_key(bucket, key)
            return ObjectInfo(key, 0, stat.st_mtime, EMPTY_MD5)
        if stat is None or not path.is_file() or path.is_symlink():
            raise _no_such_key(bucket, key)
        return _described(key, path, stat)

    def open(self, bucket: str, key: str) -> tuple[ObjectInfo, Any]:
        """The object's description and its file, opened (the caller closes it)."""
        info = self.info(bucket, key)
        if key.endswith("/"):
            return info, open(os.devnull, "rb")
        try:
            return info, open(self.path(bucket, key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise _no_such_key(bucket, key) from None

    def temporary(self, bucket: str, key: str) -> Path:
        """A new hidden file for `key`'s bytes, in its bucket's `.s3-tmp/` (the rename into
        place stays on one file system). Folders the key needs are made only by `commit`:
        a refused body leaves none behind."""
        path = self.path(bucket, key)
        if key.endswith("/"):
            raise S3Error("InvalidArgument", "A folder key takes no content", f"/{bucket}/{key}")
        base = self.bucket(bucket)
        for folder in path.parents:
            if folder == base:
                break
            if folder.exists() and not folder.is_dir():
                raise _parent_is_object(bucket, key)
        staging = base / STAGING
        temp = staging / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        with self._lock:
            self.bucket(bucket)  # not deleted since
            staging.mkdir(exist_ok=True)
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return temp

    def commit(
        self,
        temp: Path,
        bucket: str,
        key: str,
        etag: str,
        content_type: str,
        metadata: dict[str, str],
        check: WriteCheck | None = None,
    ) -> ObjectInfo:
        """The written `temp` renamed into place as `key` (its description set first), if
        `check` passes on the object it replaces, at that moment (under the lock)."""
        try:
            with self._lock:
                try:
                    _describe(temp, etag, content_type, metadata)
                except FileNotFoundError:
                    # Gone with its bucket, deleted while the body came (and perhaps made
                    # again): bucket deletes take this lock, so it stays once found here.
                    raise no_such_bucket(bucket) from None
                if check is not None:
                    check(self.current(bucket, key))
                return self._rename(temp, bucket, key)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def _rename(self, temp: Path, bucket: str, key: str) -> ObjectInfo:
        path = self.path(bucket, key)  # NoSuchBucket if deleted since `temporary`
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _parent_is_object(bucket, key) from None
        if path.is_dir() and not path.is_symlink():
            raise S3Error(
                "XMinioObjectExistsAsDirectory",
                "Object name already exists as a directory.",
                f"/{bucket}/{key}",
            )
        os.rename(temp, path)
        return _described(key, path, path.lstat())

    def make_folder(self, bucket: str, key: str) -> ObjectInfo:
        with self._lock:  # the bucket's folder is not made again once deleted
            path = self.path(bucket, key)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise _parent_is_object(bucket, key) from None
            return self.info(bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        """The object gone (none is not an error, as S3 answers it); a folder only when it
        holds nothing, since its keys are other objects."""
        path = self.path(bucket, key)
        try:
            if key.endswith("/"):
                path.rmdir()
            elif not path.is_dir() or path.is_symlink():
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.ENOTDIR, errno.EEXIST):
                raise

    def copy(
        self,
        source: tuple[str, str],
        bucket: str,
        key: str,
        content_type: str | None,
        metadata: dict[str, str] | None,
        source_check: WriteCheck | None = None,
        check: WriteCheck | None = None,
    ) -> ObjectInfo:
        """`source` (bucket, key) copied to `key`; its type and metadata unless given.
        `source_check` is given the source (x-amz-copy-source-if-*), `check` the object
        replaced (If-Match, If-None-Match: see commit)."""
        info, src = self.open(*source)
        with src:
            if source_check is not None:
                source_check(info)
            temp = self.temporary(bucket, key)
            try:
                with open(temp, "wb") as out:
                    shutil.copyfileobj(src, out, COPY_CHUNK)  # sendfile within the kernel
            except FileNotFoundError:
                raise no_such_bucket(bucket) from None  # its `.s3-tmp/` went with it
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        return self.commit(
            temp,
            bucket,
            key,
            info.etag,
            content_type if content_type is not None else info.content_type,
            metadata if metadata is not None else info.metadata,
            check,
        )

    def copy_range(
        self, source: tuple[str, str], byte_range: str, temp: Path,
        source_check: WriteCheck | None = None,
    ) -> str:
        """Bytes of `source` (all, or `bytes=FIRST-LAST`) written to `temp`; their MD5.
        `source_check`: as copy's."""
        info, src = self.open(*source)
        if source_check is not None:
            try:
                source_check(info)
            except BaseException:
                src.close()
                raise
        start, end = 0, info.size - 1
        if byte_range:
            unit, _, spec = byte_range.partition("=")
            first, _, last = spec.partition("-")
            # Saturated at the size: a bound past the object is one, whatever its digits.
            given = decimal(first, info.size), decimal(last, info.size)
            if unit != "bytes" or given[0] is None or given[1] is None:
                raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be "
                              "of the form bytes=first-last")
            start, end = given[0], given[1]
            if end < start or end >= info.size:
                raise S3Error("InvalidRange", "The requested range is not satisfiable")
        digest = hashlib.md5()
        with src, open(temp, "wb") as out:
            src.seek(start)
            left = end - start + 1
            while left > 0:
                data = src.read(min(left, 1 << 20))
                if not data:
                    break
                digest.update(data)
                out.write(data)
                left -= len(data)
        return digest.hexdigest()

    # ---- listing ---------------------------------------------------------------------

    def list_page(
        self, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int
    ) -> Page:
        base = self.bucket(bucket)
        if not max_keys:
            # As S3 answers max-keys=0: nothing, and no more (IsTruncated false); the
            # folder is not read for a page that shows none of it.
            return Page([], [], False, "")
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start, start_key = base, ""
        if folder:
            if folder_key_problem(f"{folder}/") is not None:
                return Page([], [], False, "")  # no key the store holds is under it
            start = base / folder
            if not start.resolve().is_relative_to(base):
                return Page([], [], False, "")
            start_key = folder + "/"
            # The walk starts inside the prefix's folder: the folder's own marker (the
            # prefix itself, `a/b/` of prefix `a/b/`) is the one key it cannot see.
            marker = _marker(start) if start_key == prefix and prefix > after else None
            if marker is not None:  # empty: the marker is the whole listing
                return Page([ObjectInfo(prefix, 0, marker.st_mtime, EMPTY_MD5)], [], False, "")
        walker = _Walker(prefix, after)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for key, path, stat in walker.walk(start, start_key):
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    walker.after = common + LAST  # the rest under it is skipped
                    if len(objects) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    last = common + LAST
                    continue
            if len(objects) + len(prefixes) >= max_keys:
                truncated = True
                break
            if key.endswith("/"):
                objects.append(ObjectInfo(key, 0, stat.st_mtime, EMPTY_MD5))
            else:
                objects.append(_described(key, path, stat))
            last = key
        return Page(objects, prefixes, truncated, last if truncated else "")

    # ---- multipart uploads -----------------------------------------------------------

    def create_upload(
        self, bucket: str, key: str, content_type: str, metadata: dict[str, str]
    ) -> str:
        self.path(bucket, key)  # the key is checked now, not at the end
        # Its time first: ids sort in the order their uploads were made, as S3 lists a
        # key's uploads, and a page of the listing resumes after one named.
        upload_id = f"{time.time_ns():016x}{secrets.token_hex(8)}"
        folder = self.uploads / upload_id
        record = {
            "bucket": bucket,
            "key": key,
            "initiated": time.time(),
            "content_type": content_type,
            "metadata": metadata,
        }
        # Under the lock DeleteBucket takes to abort the bucket's uploads: an upload made
        # as its bucket goes would outlive it, and could complete into a bucket of that
        # name made later.
        with self._lock:
            self.bucket(bucket)  # not deleted since
            folder.mkdir(parents=True)
            (folder / "upload.json").write_text(json.dumps(record))
        return upload_id

    def upload(self, bucket: str, key: str, upload_id: str) -> Upload:
        folder = self._upload_folder(upload_id)
        try:
            record = json.loads((folder / "upload.json").read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            record = None
        if record is None or record["bucket"] != bucket or record["key"] != key:
            raise no_such_upload(bucket, key)
        return Upload(
            upload_id,
            bucket,
            key,
            record["initiated"],
            record["content_type"],
            record["metadata"],
        )

    def _upload_folder(self, upload_id: str) -> Path:
        if len(upload_id) != 32 or not all(c in "0123456789abcdef" for c in upload_id):
            raise S3Error("NoSuchUpload", "The specified upload does not exist.")
        return self.uploads / upload_id

    def part_temporary(self, upload: Upload) -> Path:
        temp = self.uploads / upload.upload_id / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileNotFoundError:
            raise no_such_upload(upload.bucket, upload.key) from None
        return temp

    def commit_part(self, upload: Upload, number: int, temp: Path, etag: str) -> Part:
        """The part's file named by its number and ETag; an earlier one of that number gone."""
        folder = self.uploads / upload.upload_id
        earlier = [p for p in self.parts(upload) if p.number == number]
        target = folder / f"{number:05d}-{etag}"
        try:
            os.rename(temp, target)
        except FileNotFoundError:
            temp.unlink(missing_ok=True)
            raise no_such_upload(upload.bucket, upload.key) from None
        for part in earlier:
            if part.path != target:
                part.path.unlink(missing_ok=True)
        stat = target.stat()
        return Part(number, etag, stat.st_size, stat.st_mtime, target)

    def parts(self, upload: Upload) -> list[Part]:
        found = []
        try:
            entries = list(os.scandir(self.uploads / upload.upload_id))
        except FileNotFoundError:
            raise no_such_upload(upload.bucket, upload.key) from None
        for entry in entries:
            number, dash, etag = entry.name.partition("-")
            if dash and number.isdigit():
                stat = entry.stat()
                found.append(Part(int(number), etag, stat.st_size, stat.st_mtime,
                                  Path(entry.path)))
        return sorted(found, key=lambda p: p.number)

    def complete(
        self, upload: Upload, wanted: list[tuple[int, str]], check: WriteCheck | None = None
    ) -> ObjectInfo:
        """The parts named (number, ETag), in order, joined into the object (see commit
        for `check`)."""
        if check is not None:  # before the parts are joined; commit checks again
            check(self.current(upload.bucket, upload.key))
        if not wanted:
            raise S3Error("MalformedXML", "You must specify at least one part")
        numbers = [n for n, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.")
        have = {p.number: p for p in self.parts(upload)}
        chosen = []
        for index, (number, etag) in enumerate(wanted):
            part = have.get(number)
            if part is None or part.etag != etag.strip('"'):
                raise S3Error("InvalidPart", f"Part {number} could not be found or its ETag "
                              "does not match.")
            if index < len(wanted) - 1 and part.size < MIN_PART:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the "
                              "minimum allowed object size.")
            chosen.append(part)
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen))
        etag = f"{digest.hexdigest()}-{len(chosen)}"
        temp = self.temporary(upload.bucket, upload.key)
        try:
            with open(temp, "wb") as out:
                for part in chosen:
                    with open(part.path, "rb") as src:
                        shutil.copyfileobj(src, out, COPY_CHUNK)
        except FileNotFoundError:
            # The temporary file went with its bucket, or a part with the upload (aborted,
            # or with its bucket, deleted meanwhile): the client's error, not the server's.
            temp.unlink(missing_ok=True)
            self.bucket(upload.bucket)
            raise no_such_upload(upload.bucket, upload.key) from None
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        info = self.commit(
            temp, upload.bucket, upload.key, etag, upload.content_type, upload.metadata, check
        )
        _remove(_set_aside(self.uploads / upload.upload_id))
        return info

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        upload = self.upload(bucket, key, upload_id)
        _remove(_set_aside(self.uploads / upload.upload_id))

    def list_uploads(self, bucket: str, prefix: str = "") -> list[Upload]:
        found: list[Upload] = []
        if not self.uploads.is_dir():
            return found
        for entry in os.scandir(self.uploads):
            if entry.name.startswith("."):
                continue  # an upload being removed (_set_aside)
            try:
                record = json.loads(Path(entry.path, "upload.json").read_text())
            except (OSError, ValueError):
                continue
            if record["bucket"] == bucket and record["key"].startswith(prefix):
                found.append(Upload(entry.name, bucket, record["key"], record["initiated"],
                                    record["content_type"], record["metadata"]))
        return sorted(found, key=lambda u: (u.key, u.upload_id))


class _Walker:
    """A bucket's keys in S3's order (by code point, as UTF-8's bytes sort: a folder sorts
    as its name and `/`), below the prefix and after `after`, which may move while
    walking: subtrees wholly before it are not read. A folder read costs one pass over
    its names (os.listdir): those wholly before `after` or the prefix are dropped, the
    rest heaped and taken in order as far as the page goes; an entry is stat'ed only when
    reached (its kind: a folder goes back in as `name/`, where it sorts). Built and sorted
    as paths, a folder of 100 000 files cost 2-3 s a page, whatever the page's size."""

    def __init__(self, prefix: str, after: str) -> None:
        self.prefix = prefix
        self.after = after

    def walk(self, folder: Path, key: str) -> Iterator[tuple[str, str, os.stat_result]]:
        """(key, path, lstat) of each file, and of each empty folder (`key/`)."""
        yield from self._walk(str(folder), key)

    def _walk(self, folder: str, key: str) -> Iterator[tuple[str, str, os.stat_result]]:
        after = self.after
        floors = (_floor(key, self.prefix, after=False), _floor(key, after, after=True))
        if floors[0] is None or floors[1] is None:
            return
        lowest = max(floors[0], floors[1])
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        # Kept when it is, or as a folder (`name/`) would be, not below the floor.
        heap = [n for n in names if n + "/" >= lowest] if lowest else names
        heapq.heapify(heap)
        while heap:
            if self.after != after:  # moved on while walking: drop what it passed over
                after = self.after
                floor = _floor(key, after, after=True)
                if floor is None:
                    return
                while heap and heap[0] + "/" < floor:
                    heapq.heappop(heap)
                continue
            name = heapq.heappop(heap)
            child = key + name
            if not (child.startswith(self.prefix) or self.prefix.startswith(child)):
                if child > self.prefix:
                    return  # past the prefix: so is every name after it
                continue
            if name.startswith("."):
                continue
            try:
                name.encode()
            except UnicodeEncodeError:
                continue  # not UTF-8: no key can name it
            if not name.endswith("/"):
                # A file is listed only under the prefix; a folder is also entered when the
                # prefix goes on inside it (a file `a` is no key of prefix `ab`).
                listed = child.startswith(self.prefix) and child > self.after
                if not (listed or self._enters(child + "/")):
                    continue  # neither as a file nor as a folder: its kind does not matter
                path = os.path.join(folder, name)
                try:
                    stat = os.lstat(path)
                except (FileNotFoundError, NotADirectoryError, PermissionError):
                    # Deleted while listed; or in a folder we may list but not search
                    # (its entries cannot be looked at: skipped, as unreadable folders are).
                    continue
                if S_ISDIR(stat.st_mode):
                    heapq.heappush(heap, name + "/")  # where a folder sorts
                elif listed and S_ISREG(stat.st_mode):  # links are not followed
                    yield child, path, stat
                continue
            if not self._enters(child):
                continue
            path = os.path.join(folder, name[:-1])
            if _is_empty(path):
                if child > self.after and child.startswith(self.prefix):
                    try:
                        stat = os.lstat(path)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    yield child, path, stat  # an empty folder: a folder marker, as MinIO lists it
                continue
            yield from self._walk(path, child)

    def _enters(self, folder: str) -> bool:
        """Whether keys under `folder` (a key ending in `/`) may be listed: it is under the
        prefix or holds it, and is not wholly before `after`."""
        return (folder.startswith(self.prefix) or self.prefix.startswith(folder)) and (
            folder > self.after or self.after.startswith(folder)
        )


def _floor(key: str, bound: str, after: bool) -> str | None:
    """The least name (a folder's with its `/`) in the folder of `key` whose keys are not
    all before `bound` (with `after`, at it too: keys listed come after the marker); None
    when there is none. A folder holding `bound` is not before it."""
    if not bound.startswith(key):
        return "" if key > bound else None
    rest = bound[len(key):]
    cut = rest.find("/")
    if cut >= 0:  # `bound` is in a folder of this one
        return rest[: cut + 1]
    return rest + "\0" if after else rest  # nothing sorts between `rest` and `rest\0`


def _holds_files(folder: Path) -> bool:
    """Whether any file is below the bucket's folder, but bodies being received: folders
    left empty (as deleting an object leaves them, to keep the service's input folders)
    do not keep a bucket from going; a hidden file put there by other means does."""
    for top, folders, files in os.walk(folder):
        if top == str(folder):
            folders[:] = [f for f in folders if f != STAGING]
        if files:
            return True
    return False


def _set_aside(folder: Path) -> Path | None:
    """`folder` renamed to a hidden name beside it, to be removed (None: it was gone).
    Removed in place, a file made in it meanwhile (a body's temporary file, a part's
    rename) would land in a folder already listed for removal: left there, or failing
    the removal. Renamed first, the folder is out of reach at once: such a write fails
    to find it, as one after the removal would (NoSuchBucket, NoSuchUpload)."""
    gone = folder.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}")
    try:
        os.rename(folder, gone)
    except FileNotFoundError:
        return None
    return gone


def _remove(folder: Path | None) -> None:
    """A folder set aside removed; what cannot be is removed at the next start."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _marker(folder: Path) -> os.stat_result | None:
    """The lstat of `folder` when it is a folder marker (a real folder, not a link, with
    nothing in it), as the walker lists one; else None."""
    try:
        stat = os.lstat(folder)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return stat if S_ISDIR(stat.st_mode) and _is_empty(str(folder)) else None


def _is_empty(folder: str) -> bool:
    try:
        with os.scandir(folder) as found:
            return not any(not e.name.startswith(".") for e in found)
    except OSError:
        return True


def _describe(path: Path, etag: str, content_type: str, metadata: dict[str, str]) -> None:
    stat = path.stat()
    record = {
        "etag": etag,
        "type": content_type,
        "meta": metadata,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    try:
        os.setxattr(path, ATTRIBUTE, json.dumps(record).encode())
    except OSError as exc:
        if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
            # More than the file system keeps with a file (ext4: some 4 KiB; a long
            # Content-Type, or metadata under S3's limit but escaped in JSON): refused,
            # never answered 200 and then lost.
            raise S3Error("MetadataTooLarge", "The object's Content-Type and metadata are "
                          "more than the store can keep with it.") from None
        # A file system without user attributes: the object is kept, described as a
        # file put there by other means would be.
        if exc.errno != errno.ENOTSUP:
            raise


def _created(folder: Path | str) -> float:
    """When the bucket of `folder` was made: as recorded on it; else its time now, recorded
    unless a record came meanwhile (XATTR_CREATE: the first one stays, and is read back).
    Where nothing can be recorded (no user attributes, a folder of another user), its
    time, as it is: FileNotFoundError when the folder is gone."""
    recorded = _recorded_creation(folder)
    if recorded is not None:
        return recorded
    made_ns = os.lstat(folder).st_mtime_ns
    try:
        os.setxattr(folder, ATTRIBUTE, json.dumps({"created_ns": made_ns}).encode(),
                    os.XATTR_CREATE, follow_symlinks=False)
    except FileExistsError:
        recorded = _recorded_creation(folder)
    except FileNotFoundError:
        raise
    except OSError:
        pass
    return made_ns / 1e9 if recorded is None else recorded


def _recorded_creation(folder: Path | str) -> float | None:
    try:
        record = json.loads(os.getxattr(folder, ATTRIBUTE, follow_symlinks=False))
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None
    made_ns = record.get("created_ns") if isinstance(record, dict) else None
    return made_ns / 1e9 if isinstance(made_ns, int) else None


def _described(key: str, path: Path | str, stat: os.stat_result) -> ObjectInfo:
    try:
        record = json.loads(os.getxattr(path, ATTRIBUTE))
    except (OSError, ValueError):
        record = None
    if (
        isinstance(record, dict)
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    ):
        return ObjectInfo(
            key,
            stat.st_size,
            stat.st_mtime,
            str(record["etag"]),
            str(record.get("type") or DEFAULT_TYPE),
            {str(k): str(v) for k, v in (record.get("meta") or {}).items()},
        )
    # Not written through S3 (or rewritten since): an ETag any rewrite changes.
    token = f"{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ino}".encode()
    return ObjectInfo(key, stat.st_size, stat.st_mtime, hashlib.md5(token).hexdigest())


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error("NoSuchBucket", "The specified bucket does not exist", f"/{bucket}")


def _no_such_key(bucket: str, key: str) -> S3Error:
    return S3Error("NoSuchKey", "The specified key does not exist.", f"/{bucket}/{key}")


def _parent_is_object(bucket: str, key: str) -> S3Error:
    return S3Error(
        "XMinioParentIsObject",
        "Object-prefix is already an object, please choose a different object-prefix name.",
        f"/{bucket}/{key}",
    )


def no_such_upload(bucket: str, key: str) -> S3Error:
    return S3Error(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload "
        "may have been aborted or completed.",
        f"/{bucket}/{key}",
    )
