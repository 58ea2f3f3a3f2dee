"""Paths that are local files or object-store URLs (``gs://``, ``s3://``, any fsspec URL).

Every path a user gives (shards, workdir, exports, task data) goes through these functions, so
a bucket works wherever a directory does. Local paths keep the plain ``os`` calls (and the
mmap fast path in :mod:`ecgjax.data.source`); URLs go through fsspec (``gcsfs`` for ``gs://``),
which honours ``STORAGE_EMULATOR_HOST``. Orbax checkpoints take ``gs://`` natively through
tensorstore and do not come here.

Object stores have no directories and no rename: :func:`makedirs` is a no-op there and
:func:`write_bytes` is one PUT, which an object store makes visible all at once (the atomicity
``os.replace`` gives locally). Listings are never cached, because checkpoints and other
processes write behind fsspec's back.
"""
from __future__ import annotations

import builtins
import contextlib
import glob as glob_lib
import os
import posixpath
import shutil
import tempfile
from typing import IO, Iterator


def is_remote(path: str | os.PathLike) -> bool:
  """True for a URL (``gs://b/x``) other than ``file://``."""
  s = os.fspath(path)
  return "://" in s and not s.startswith("file://")


def _fs(path: str):
  import fsspec  # pylint: disable=g-import-not-at-top  (local runs never need it)
  try:
    return fsspec.core.url_to_fs(path, use_listings_cache=False)
  except (ImportError, ValueError) as e:
    scheme = path.split("://", 1)[0]
    extra = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}.get(scheme)
    hint = f" (pip install {extra}, or pip install 'ecgjax[gcs]')" if extra else ""
    raise OSError(f"cannot open {path}: no filesystem for {scheme}://{hint}: {e}") from e


def join(base: str, *parts: str) -> str:
  if is_remote(base):
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(
      os.path.normpath(path))


def dirname(path: str) -> str:
  return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def abspath(path: str) -> str:
  """Absolute local path; URLs are already absolute."""
  return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  fs, p = _fs(path)
  return fs.exists(p)


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  fs, p = _fs(path)
  return fs.isfile(p)


def isdir(path: str) -> bool:
  """A local directory, or a URL prefix with at least one object under it."""
  if not is_remote(path):
    return os.path.isdir(path)
  fs, p = _fs(path)
  return fs.isdir(p)


def getsize(path: str) -> int:
  if not is_remote(path):
    return os.path.getsize(path)
  fs, p = _fs(path)
  return int(fs.size(p))


def info(path: str) -> dict:
  """A file's metadata: ``size`` always; ``mtime_ns`` locally, the store's fields (e.g. GCS
  ``generation``, ``crc32c``) for a URL."""
  if not is_remote(path):
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
  fs, p = _fs(path)
  return dict(fs.info(p))


def listdir(path: str) -> list[str]:
  """Names (not paths) directly under ``path``."""
  if not is_remote(path):
    return os.listdir(path)
  fs, p = _fs(path)
  return sorted(posixpath.basename(x.rstrip("/")) for x in fs.ls(p, detail=False))


def file_sizes(path: str) -> dict[str, int]:
  """{path: size} of the files directly under ``path`` ({} if none; a URL: one listing)."""
  if not is_remote(path):
    if not os.path.isdir(path):
      return {}
    with os.scandir(path) as it:
      return {os.path.join(path, e.name): e.stat().st_size for e in it if e.is_file()}
  fs, p = _fs(path)
  scheme = path.split("://", 1)[0]
  try:
    entries = fs.ls(p, detail=True)
  except FileNotFoundError:
    return {}
  return {f"{scheme}://{e['name']}": int(e["size"]) for e in entries if e["type"] == "file"}


def glob(pattern: str) -> list[str]:
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern))
  fs, _ = _fs(pattern)
  scheme = pattern.split("://", 1)[0]
  return sorted(f"{scheme}://{x}" for x in fs.glob(pattern))


def walk_files(path: str) -> list[str]:
  """Every file under ``path``, relative to it (sorted)."""
  if not is_remote(path):
    out = []
    for root, _, files in os.walk(path):
      out += [os.path.relpath(os.path.join(root, f), path) for f in files]
    return sorted(out)
  fs, p = _fs(path)
  p = p.rstrip("/")
  return sorted(posixpath.relpath(x, p) for x in fs.find(p))


def makedirs(path: str) -> None:
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)  # object stores have no directories to make.


def open(path: str, mode: str = "r", **kwargs) -> IO:  # pylint: disable=redefined-builtin
  """``builtins.open`` locally; a buffered fsspec file for URLs (written on close)."""
  if not is_remote(path):
    return builtins.open(path, mode, **kwargs)
  fs, p = _fs(path)
  return fs.open(p, mode, **kwargs)


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with builtins.open(path, "rb") as f:
      return f.read()
  fs, p = _fs(path)
  return fs.cat_file(p)


def read_many(paths: list[str]) -> list[bytes]:
  """``read_bytes`` of each path; for URLs the GETs go out together."""
  if not paths or not is_remote(paths[0]):
    return [read_bytes(p) for p in paths]
  fs, _ = _fs(paths[0])
  stripped = [fs._strip_protocol(p) for p in paths]  # pylint: disable=protected-access
  got = fs.cat(stripped, on_error="raise")
  return [got[p] for p in stripped]


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def read_range(path: str, start: int, end: int) -> bytes:
  """Bytes ``[start, end)`` of a file (one ranged GET for a URL); short if the file is."""
  if not is_remote(path):
    with builtins.open(path, "rb") as f:
      f.seek(start)
      return f.read(max(0, end - start))
  fs, p = _fs(path)
  return fs.cat_file(p, start=start, end=end)


def read_ranges(paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
  """``read_range`` of many (path, start, end) at once: for URLs concurrent GETs (one round
  trip's latency for the lot instead of one per range), locally one read each."""
  if not paths:
    return []
  if not is_remote(paths[0]):
    return [read_range(p, s, e) for p, s, e in zip(paths, starts, ends)]
  fs, _ = _fs(paths[0])
  stripped = [fs._strip_protocol(p) for p in paths]  # pylint: disable=protected-access
  return fs.cat_ranges(stripped, list(starts), list(ends), on_error="raise")


def write_bytes(path: str, data: bytes, mode: int | None = None) -> None:
  """Writes a whole file so that readers see the old or the new content, never a part.

  Locally: a temporary file, fsync, ``chmod(mode)`` if given, then ``os.replace``. URLs: one
  upload, which the object store publishes atomically (``mode`` does not apply).
  """
  if is_remote(path):
    fs, p = _fs(path)
    fs.pipe_file(p, data)
    return
  makedirs(os.path.dirname(path) or ".")
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with builtins.open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    if mode is not None:
      os.chmod(tmp, mode)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str, mode: int | None = None) -> None:
  write_bytes(path, text.encode("utf-8"), mode)


def remove(path: str) -> None:
  if not is_remote(path):
    os.remove(path)
    return
  fs, p = _fs(path)
  fs.rm_file(p)


def rmtree(path: str) -> None:
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  fs, p = _fs(path)
  if fs.exists(p):
    fs.rm(p, recursive=True)


def move(src: str, dst: str) -> None:
  """Renames a file or directory tree; on an object store (no rename) copies, then deletes."""
  if not is_remote(src) and not is_remote(dst):
    os.replace(src, dst)
    return
  if is_remote(src) != is_remote(dst):
    raise ValueError(f"cannot move {src} to {dst}: both must be local or both URLs")
  fs, p = _fs(src)
  _, q = _fs(dst)
  fs.copy(p.rstrip("/"), q.rstrip("/"), recursive=fs.isdir(p))
  fs.rm(p, recursive=True)


def invalidate_caches(path: str) -> None:
  """Makes every cached fsspec instance of ``path``'s scheme forget its listings.

  Other libraries hold their own instances (Orbax through etils.epath): after this module
  deletes or moves objects under their feet, their cached listings would still show them.
  """
  if is_remote(path):
    cls = type(_fs(path)[0])
    for fs in list(getattr(cls, "_cache", {}).values()):
      fs.invalidate_cache()


def upload(local_path: str, path: str) -> None:
  """Copies a local file to ``path`` (local or URL)."""
  if not is_remote(path):
    makedirs(os.path.dirname(path) or ".")
    shutil.copyfile(local_path, path)
    return
  fs, p = _fs(path)
  fs.put_file(local_path, p)


def download(path: str, local_path: str) -> None:
  """Copies ``path`` (local or URL) to the local file ``local_path``."""
  if not is_remote(path):
    shutil.copyfile(path, local_path)
    return
  fs, p = _fs(path)
  fs.get_file(p, local_path)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """A local path with the file's content, for libraries that only open local files."""
  if not is_remote(path):
    yield path
    return
  fd, tmp = tempfile.mkstemp(suffix="_" + basename(path))
  os.close(fd)
  try:
    fs, p = _fs(path)
    fs.get_file(p, tmp)
    yield tmp
  finally:
    os.remove(tmp)
