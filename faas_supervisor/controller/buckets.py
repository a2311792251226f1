"""The default storage provider as the controller sees it: buckets and their objects.

Either a folder (`<path>/<bucket>/<key>`, the embedded default) or a MinIO/S3 server
(boto3). The bucket API, service creation (buckets of the input and output paths) and
the input watcher all go through this one small interface. Calls are blocking; the
callers run them in a thread. The MinIO providers a service defines are S3Stores too
(`provider_store`): service creation makes their buckets as well, and the intake lists
their input paths (servers.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, Protocol

from faas_supervisor.config import ProviderConfig, utf8_encodable
from faas_supervisor.controller.names import (
    bucket_problem,
    folder_key_problem,
    path_problem,
)
from faas_supervisor.controller.names import key_problem as s3_key_problem
from faas_supervisor.controller.s3.errors import S3Error
from faas_supervisor.controller.s3.objects import Objects
from faas_supervisor.logs import get_logger

logger = get_logger(component="buckets")


@dataclass(frozen=True)
class S3Endpoint:
    """The controller's own S3 endpoint over the folder store (s3/), as clients reach it."""

    url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "us-east-1"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: float  # seconds since the epoch
    etag: str = ""


class BucketStore(Protocol):
    def provider_settings(self) -> dict[str, Any]:
        """The `minio.default` settings a service's runtime gets (with its keys)."""

    def public_settings(self) -> dict[str, Any]:
        """The manager's `minio_provider` shape, for `/system/config` and service JSON."""

    def list_buckets(self) -> list[str]: ...

    def bucket_exists(self, bucket: str) -> bool: ...

    def key_problem(self, key: str) -> str | None:
        """Why the store cannot hold an object (or a folder: `key` ends in `/`) of that
        name, or None: what comes in is refused before anything is made."""

    def create_bucket(self, bucket: str) -> bool:
        """False when it already exists."""

    def ensure_path(self, bucket: str, folder: str) -> None:
        """The bucket, and the folder in it, exist afterwards."""

    def delete_bucket(self, bucket: str) -> None:
        """The bucket and every object in it."""

    def remove_if_empty(self, bucket: str) -> bool:
        """Remove the bucket if it holds nothing but folders (folder markers); False when
        something else is there, or comes meanwhile, and it stays."""

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]: ...


class FolderStore:
    """A folder of buckets; names starting with `.` (partial uploads) are not objects.

    Every path it touches is resolved and must be inside its root: a bad name raises
    `ValueError` (a 400 in the API), never a folder made elsewhere. A bucket's folder that
    is a symbolic link is no bucket (as the S3 endpoint sees it), and is never followed.
    """

    def __init__(self, root: Path, endpoint: S3Endpoint | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.endpoint = endpoint
        # The same folder as S3 objects, the one the S3 endpoint serves (server.py hands
        # it to s3_app): a bucket deleted here goes as S3's DeleteBucket deletes it, its
        # uploads with it, under the one lock the endpoint's puts take.
        self.objects = Objects(self.root)
        # Files skipped for a name that is not UTF-8 (`bucket/key`, as listed), warned of
        # once each: the watcher lists every half second. Only those still there are kept.
        self._not_utf8: set[str] = set()
        self._not_utf8_lock = threading.Lock()  # listings run in several threads

    def provider_settings(self) -> dict[str, Any]:
        # The folder itself: a local job reads and writes it without the S3 endpoint.
        return {"path": str(self.root)}

    def public_settings(self) -> dict[str, Any]:
        if self.endpoint is None:
            # No S3 endpoint and no keys: the store is a folder of this machine.
            return {
                "endpoint": "", "verify": False, "access_key": "", "secret_key": "", "region": ""
            }
        return {
            "endpoint": self.endpoint.url,
            "verify": False,  # plain HTTP: nothing to verify
            "access_key": self.endpoint.access_key,
            "secret_key": self.endpoint.secret_key,
            "region": self.endpoint.region,
        }

    def _bucket_path(self, bucket: str) -> Path:
        """Where the bucket's folder is: its name is one plain folder name (S3's rules)."""
        problem = bucket_problem(bucket)
        if problem is not None:
            raise ValueError(f"bucket {bucket!r} {problem}")
        return self.root / bucket

    def _bucket(self, bucket: str) -> Path:
        path = self._bucket_path(bucket)
        if path.is_symlink():
            raise ValueError(f"bucket {bucket!r} is a symbolic link, not a folder of the store")
        return path

    def _folder(self, bucket: str, folder: str) -> Path:
        """A folder of a bucket, which must stay in it: see `_inside`."""
        base = self._bucket(bucket)
        if not folder:
            return base
        problem = path_problem(folder)
        if problem is not None:
            raise ValueError(f"path {folder!r} {problem}")
        return self._inside(base, folder)

    @staticmethod
    def _inside(base: Path, relative: str) -> Path:
        """`base/relative`, resolved (symbolic links too); refused unless below `base`.

        Names are checked by the callers already; this is what makes an escape impossible
        whatever a name or a link on disk says.
        """
        path = (base / relative).resolve()
        if path == base or not path.is_relative_to(base):
            raise ValueError(f"{relative!r} is outside the storage folder")
        return path

    def list_buckets(self) -> list[str]:
        return [name for name, _made in self.objects.buckets()]

    def bucket_exists(self, bucket: str) -> bool:
        path = self._bucket_path(bucket)
        return path.is_dir() and not path.is_symlink()

    def key_problem(self, key: str) -> str | None:
        return folder_key_problem(key)

    def create_bucket(self, bucket: str) -> bool:
        self._bucket_path(bucket)  # a bad name is a ValueError, as everywhere here
        try:
            self.objects.create_bucket(bucket)  # where its creation time is recorded
        except S3Error as error:
            if error.code != "BucketAlreadyOwnedByYou":
                raise
            return False  # a link of that name too: the name is taken
        return True

    def ensure_path(self, bucket: str, folder: str) -> None:
        problem = self.key_problem(f"{folder}/") if folder else None
        if problem is not None:
            raise ValueError(f"path {folder!r} {problem}")
        self._folder(bucket, folder).mkdir(parents=True, exist_ok=True)

    def delete_bucket(self, bucket: str) -> None:
        self._bucket_path(bucket)  # a bad name is a ValueError, as everywhere here
        try:
            self.objects.delete_bucket(bucket, with_objects=True)
        except S3Error as error:
            if error.code != "NoSuchBucket":
                raise
            # Deleted meanwhile (or a link, which is no bucket): nothing to delete.

    def remove_if_empty(self, bucket: str) -> bool:
        # Folders only, deepest first, each with rmdir: a file anywhere (an upload's
        # hidden partial too) keeps its folders and the bucket.
        root = self._bucket(bucket)
        folders = []
        for folder, _subfolders, files in os.walk(root):
            if files:
                return False
            folders.append(folder)
        try:
            for folder in reversed(folders):
                os.rmdir(folder)
        except FileNotFoundError:
            pass
        except OSError:  # something came in meanwhile
            return False
        return True

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        base = self._bucket(bucket)
        # Walk only below the deepest folder the prefix names.
        start = self._folder(bucket, prefix.rsplit("/", 1)[0]) if "/" in prefix else base
        found: list[StoredObject] = []
        if not start.is_dir():
            return found
        not_utf8: set[str] = set()
        # Files and folders may go while we walk (an object deleted, the bucket deleted):
        # what is gone is skipped, as the S3 endpoint's listing does, never a failure.
        for top, folders, files in os.walk(start, onerror=_unless_gone):
            folders[:] = [f for f in folders if not f.startswith(".")]
            for name in files:
                path = Path(top, name)
                relative = path.relative_to(base).as_posix()
                if any(part.startswith(".") for part in relative.split("/")):
                    continue  # a hidden name (folders below the start are pruned already)
                if not relative.startswith(prefix):
                    continue
                try:
                    stat = path.lstat()  # one look: a regular file, no link to one
                except FileNotFoundError:
                    continue
                if not S_ISREG(stat.st_mode):
                    continue
                if not utf8_encodable(relative):
                    not_utf8.add(f"{bucket}/{relative}")
                    continue
                found.append(StoredObject(relative, stat.st_size, stat.st_mtime, _etag(stat)))
        if not self.bucket_exists(bucket):
            # Deleted while walked (its folder renamed away at once, objects.py): what was
            # seen before is gone too; it reads as a bucket that does not exist.
            found, not_utf8 = [], set()
        self._skipped(f"{bucket}/{prefix}", not_utf8)
        return sorted(found, key=lambda o: o.key)

    def version(self, bucket: str, key: str) -> str | None:
        """The ETag a listing gives the object now, or None when the store holds no such
        object (gone, a name it refuses, a link): an event's own ETag (the S3 endpoint's
        MD5) is not the one the listing's identity carries (identity.py)."""
        try:
            if key.endswith("/") or self.key_problem(key) is not None:
                return None
            base = self._bucket(bucket)
            path = self._inside(base, key)
            if path != base / key:
                return None  # through a link, which a listing does not follow
            stat = path.lstat()
        except (ValueError, OSError):  # a bad name, or nothing there
            return None
        return _etag(stat) if S_ISREG(stat.st_mode) else None

    def _skipped(self, listed: str, not_utf8: set[str]) -> None:
        """Warn once of each file a listing of `listed` (`bucket/prefix`) skipped because
        its name is not UTF-8: no key, event or store row can carry such a name (the
        runtime skips such output files likewise)."""
        with self._not_utf8_lock:
            for name in sorted(not_utf8 - self._not_utf8):
                # Its bytes, those not UTF-8 escaped (`a\xff.txt`).
                shown = name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
                logger.warning("a file whose name is not UTF-8 is skipped", file=shown)
            # What this listing covered is replaced by what it found: a file renamed or
            # removed is forgotten, and warned of again if it comes back.
            self._not_utf8 = {n for n in self._not_utf8 if not n.startswith(listed)} | not_utf8


def _etag(stat: os.stat_result) -> str:
    """A file's ETag in the folder store: size and time, which any rewrite changes."""
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


def _unless_gone(error: OSError) -> None:
    """os.walk's `onerror`: a folder gone (or made a file) before it was read is skipped,
    as is one we may not read (as pathlib's glob did); any other failure is the store's."""
    if not isinstance(error, FileNotFoundError | NotADirectoryError | PermissionError):
        raise error


# Seconds an S3 server's request may take to connect, and between two reads of its
# answer: the runtime's own (storage_providers/s3.py), ample for a listing's page.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0


class S3Store:
    """A MinIO/S3 server, path-style, as the OSCAR manager talks to its MinIO."""

    # The intake's listings of the server at once (servers.list_path keeps them to it),
    # and the connections kept to it: those, and as many for the API's calls (bucket
    # creates and removals). More calls at once each open and drop a connection,
    # urllib3 logging a warning for every drop.
    LISTINGS = 10
    CONNECTIONS = 2 * LISTINGS

    def __init__(
        self, endpoint: str, access_key: str, secret_key: str, region: str, verify: bool = True,
        *, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.region = region
        self.verify = verify
        self._keys = (access_key, secret_key)
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            verify=verify,
            # botocore waits 60 s for each (three attempts): a server that drops packets
            # would hold a service's create, and a watcher's thread, for minutes.
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                          connect_timeout=connect_timeout, read_timeout=read_timeout,
                          max_pool_connections=self.CONNECTIONS),
        )

    @property
    def keys(self) -> tuple[str, str]:
        """The access key and secret key, for the other APIs of the same server."""
        return self._keys

    def other_client(self, service: str) -> Any:
        """A boto3 client of another API (SNS, SQS) of the same server, with the same keys."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=self._keys[0],
            aws_secret_access_key=self._keys[1],
            region_name=self.region,
            verify=self.verify,
            config=Config(retries={"max_attempts": 3}),
        )

    def provider_settings(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "verify": self.verify,
            "access_key": self._keys[0],
            "secret_key": self._keys[1],
            "region": self.region,
        }

    def public_settings(self) -> dict[str, Any]:
        return self.provider_settings()

    def list_buckets(self) -> list[str]:
        return sorted(b["Name"] for b in self.client.list_buckets().get("Buckets", []))

    def bucket_exists(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            # Only "not found" says no: a refusal (wrong keys: 403) is the server's failure,
            # which the caller shows as such (a 502 naming the provider).
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise
        return True

    def key_problem(self, key: str) -> str | None:
        return s3_key_problem(key)  # a real S3 server keeps no names for itself

    def create_bucket(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        if self.bucket_exists(bucket):
            return False
        args: dict[str, Any] = {"Bucket": bucket}
        if self.region and self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**args)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                return False
            raise
        return True

    def ensure_path(self, bucket: str, folder: str) -> None:
        from botocore.exceptions import ClientError

        created = self.create_bucket(bucket)
        if not folder:
            return
        marker = folder.rstrip("/") + "/"
        if not created:
            # Made once: a marker put again on update would be a new object in a watched
            # path, an event the service's notification sends.
            try:
                self.client.head_object(Bucket=bucket, Key=marker)
                return
            except ClientError:
                pass
        # A folder marker, as the manager (and the MinIO console) make.
        self.client.put_object(Bucket=bucket, Key=marker, Body=b"")

    def remove_if_empty(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        markers = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    return False
                markers.append({"Key": obj["Key"]})
        for start in range(0, len(markers), 1000):  # DeleteObjects takes 1 000 at most
            self.client.delete_objects(Bucket=bucket,
                                       Delete={"Objects": markers[start:start + 1000]})
        try:
            self.client.delete_bucket(Bucket=bucket)  # refused if an object came meanwhile
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "BucketNotEmpty":
                return False
            raise
        return True

    def delete_bucket(self, bucket: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        self.client.delete_bucket(Bucket=bucket)

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue  # folder markers are not objects a service processes
                found.append(
                    StoredObject(
                        obj["Key"],
                        int(obj["Size"]),
                        obj["LastModified"].timestamp(),
                        obj.get("ETag", "").strip('"'),
                    )
                )
        return found


def provider_endpoint(settings: Mapping[str, Any]) -> str:
    """A service's own MinIO provider's endpoint as the runtime reaches it: one without a
    scheme (OSCAR's `minio:9000`) is HTTP (storage_providers/s3.py)."""
    endpoint = str(settings.get("endpoint") or "")
    return endpoint if "://" in endpoint else f"http://{endpoint}"


@dataclass(frozen=True)
class S3Access:
    """What an S3Store of a service's own MinIO provider is made of: two providers (of one
    service or of two) that give the same are one server, listed through one store
    (servers.py)."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str
    verify: bool

    def open(self) -> S3Store:
        """A store of this server (blocking: boto3 takes tens of milliseconds)."""
        return S3Store(self.endpoint, self.access_key, self.secret_key, self.region, self.verify)


def provider_access(settings: Mapping[str, Any]) -> S3Access:
    """The server of a MinIO provider a service defines (`minio.ID`, not the default), its
    settings read as the runtime reads them: region us-east-1 and `verify` true unless
    given. Its endpoint and keys are there: the definition's validation requires them."""
    config = ProviderConfig("minio", "", {
        key: value if isinstance(value, bool) else str(value) for key, value in settings.items()
    })
    return S3Access(
        provider_endpoint(settings),
        config.get("access_key"),
        config.get("secret_key"),
        config.get("region") or "us-east-1",
        config.flag("verify", True),
    )


def provider_store(settings: Mapping[str, Any]) -> S3Store:
    """A store of the server of a MinIO provider a service defines (`provider_access`)."""
    return provider_access(settings).open()


def build_store(
    data_dir: Path, minio: Mapping[str, str | None], s3: S3Endpoint | None = None
) -> BucketStore:
    """The folder store under the data folder (served over S3 at `s3` when given), or the
    server given with --minio-endpoint."""
    endpoint = minio.get("endpoint")
    if not endpoint:
        return FolderStore(data_dir / "storage", s3)
    return S3Store(
        endpoint,
        minio.get("access_key") or "",
        minio.get("secret_key") or "",
        minio.get("region") or "us-east-1",
    )
