"""ecgjax.storage against a local directory and a real GCS API server (the emulator)."""
import os

import pytest

from ecgjax import storage


@pytest.fixture
def root(storage_root):
  return storage_root


def test_write_read_list_and_ranges(root):
  path = storage.join(root, "a", "b.bin")
  storage.makedirs(storage.dirname(path))
  storage.write_bytes(path, b"0123456789")
  assert storage.exists(path) and storage.isfile(path)
  assert storage.isdir(storage.join(root, "a"))
  assert storage.read_bytes(path) == b"0123456789"
  assert storage.read_range(path, 3, 6) == b"345"
  assert storage.read_range(path, 8, 20) == b"89"  # short at the end, as a local read is.
  assert storage.getsize(path) == 10
  assert storage.file_sizes(storage.join(root, "a")) == {path: 10}
  assert storage.read_many([path, path]) == [b"0123456789"] * 2
  assert storage.listdir(storage.join(root, "a")) == ["b.bin"]
  assert storage.glob(storage.join(root, "a", "*.bin")) == [path]
  storage.write_text(storage.join(root, "a", "c", "d.txt"), "hé")
  assert storage.walk_files(root) == ["a/b.bin", "a/c/d.txt"]
  with storage.open(storage.join(root, "a", "c", "d.txt")) as f:
    assert f.read() == "hé"
  with storage.local_copy(path) as local:
    assert not storage.is_remote(local) and open(local, "rb").read() == b"0123456789"
  storage.remove(path)
  assert not storage.exists(path)
  storage.rmtree(storage.join(root, "a"))
  assert not storage.exists(storage.join(root, "a", "c", "d.txt"))


def test_write_bytes_replaces_whole_file(root):
  path = storage.join(root, "f.json")
  storage.write_text(path, "old content, longer")
  storage.write_text(path, "new")
  assert storage.read_text(path) == "new"
  if not storage.is_remote(root):
    assert os.listdir(root) == ["f.json"]  # no temporary file left behind.


def test_unknown_scheme_names_the_path():
  with pytest.raises(OSError, match="nosuchfs://x/y"):
    storage.exists("nosuchfs://x/y")


def test_paths():
  assert storage.is_remote("gs://b/x") and not storage.is_remote("/tmp/x")
  assert not storage.is_remote("file:///tmp/x")
  assert storage.join("gs://b/x", "y", "z") == "gs://b/x/y/z"
  assert storage.basename("gs://b/x/y/") == "y" and storage.dirname("gs://b/x/y") == "gs://b/x"
  assert storage.abspath("gs://b/x") == "gs://b/x"


def test_move_file_and_tree(root):
  storage.write_text(storage.join(root, "src", "x", "a.txt"), "a")
  storage.write_text(storage.join(root, "src", "b.txt"), "b")
  storage.move(storage.join(root, "src"), storage.join(root, "dst"))
  assert not storage.exists(storage.join(root, "src", "b.txt"))
  assert storage.walk_files(storage.join(root, "dst")) == ["b.txt", "x/a.txt"]
  assert storage.read_text(storage.join(root, "dst", "x", "a.txt")) == "a"
  storage.move(storage.join(root, "dst", "b.txt"), storage.join(root, "c.txt"))
  assert storage.read_text(storage.join(root, "c.txt")) == "b"
  assert not storage.exists(storage.join(root, "dst", "b.txt"))
