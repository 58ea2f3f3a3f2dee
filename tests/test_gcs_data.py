"""Shards in a bucket: the converter writes them, the input pipeline reads them, against a real
GCS JSON API server (gcp-storage-emulator, the ``gcs_emulator`` fixture), beside the same
conversion on a local disk."""
import json
import os
import pickle

import numpy as np
import pytest

import configs.hl as hl
from data_pipelines import convert
from ecgjax import config_validation, storage
from ecgjax.config import ConfigError
from ecgjax.data import mixture, pipeline
from ecgjax.data import source as source_lib
from ecgjax.data import spec as spec_lib
from ecgjax.data import tfrecord
from ecgjax.data.source import ShardedSource

CONVERT_ARGS = ["--format=synthetic", "--num_records=120", "--num_shards=3", "--workers=1",
                "--sampling_rate=250", "--duration_s=4", "--seed=5", "--quiet"]
# spec.json fields that differ between two runs of the same conversion.
RUN_FIELDS = ("created", "conversion")


def _convert(output: str) -> dict:
  return convert.convert(convert.build_parser().parse_args([*CONVERT_ARGS, f"--output={output}"]))


class _WriteLog:
  """Records the remote objects written, in order, around the real storage calls."""

  def __init__(self, mp: pytest.MonkeyPatch):
    self.paths = []
    for name, arg in (("write_bytes", 0), ("upload", 1)):
      real = getattr(storage, name)

      def logged(*a, _real=real, _arg=arg, **k):
        _real(*a, **k)
        if storage.is_remote(a[_arg]):
          self.paths.append(a[_arg])
      mp.setattr(storage, name, logged)


@pytest.fixture(scope="module")
def dirs(gcs_emulator, tmp_path_factory):
  """(local dir, bucket dir, remote write order) of one synthetic conversion."""
  local = str(tmp_path_factory.mktemp("gcs_data_local"))
  remote = f"{gcs_emulator}/gcs_data_{os.getpid()}/shards"
  _convert(local)
  with pytest.MonkeyPatch.context() as mp:
    log = _WriteLog(mp)
    _convert(remote)
  return local, remote, log.paths


def _without_run_fields(text: str) -> dict:
  spec = json.loads(text)
  return {k: v for k, v in spec.items() if k not in RUN_FIELDS}


def test_bucket_conversion_equals_local_and_spec_comes_last(dirs):
  local, remote, written = dirs
  files = storage.walk_files(local)
  assert storage.walk_files(remote) == files
  assert sum(".tfrecord-" in f and not f.startswith("index/") for f in files) == 9  # 3 splits
  for f in files:
    a, b = storage.read_bytes(os.path.join(local, f)), storage.read_bytes(f"{remote}/{f}")
    if f == spec_lib.SPEC_FILE:
      assert _without_run_fields(a) == _without_run_fields(b)
    else:
      assert a == b, f
  assert written[-1] == f"{remote}/{spec_lib.SPEC_FILE}" and written.count(written[-1]) == 1
  for shard in (p for p in written if ".tfrecord-" in p and "/index/" not in p):
    assert written.index(tfrecord.index_path(shard)) < written.index(shard)  # index first


def test_interrupted_bucket_conversion_has_no_spec_and_resumes(gcs_emulator, tmp_path):
  remote = f"{gcs_emulator}/gcs_resume_{os.getpid()}"
  real = convert.convert_group

  def dies_on_group_2(reader, items, group, *a, **k):
    if group == 2:
      raise KeyboardInterrupt("killed")
    return real(reader, items, group, *a, **k)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(convert, "convert_group", dies_on_group_2)
    with pytest.raises(KeyboardInterrupt):
      _convert(remote)
  assert not spec_lib.exists(remote)
  with pytest.raises(spec_lib.SpecError, match=f"{remote}/spec.json not found"):
    ShardedSource(remote, "train")
  with pytest.MonkeyPatch.context() as mp:
    log = _WriteLog(mp)
    spec = _convert(remote)
  shards = [p for p in log.paths if ".tfrecord-" in p and "/index/" not in p]
  assert shards and all("-00002-of-" in p for p in shards)  # groups 0 and 1 were kept.
  assert spec["num_records"] == 120 and spec_lib.exists(remote)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_record_from_the_bucket_equals_the_local_one(dirs, split):
  local, remote, _ = dirs
  with pytest.MonkeyPatch.context() as mp:  # opening lists the bucket: no requests per shard.
    for name in ("exists", "isfile", "getsize"):
      mp.setattr(storage, name, lambda *_: pytest.fail("a request per shard"))
    b = ShardedSource(remote, split)
  a = ShardedSource(local, split)
  assert len(a) == len(b) > 0 and b.paths[0].startswith("gs://")
  for i in range(len(a)):
    assert bytes(a[i]) == bytes(b[i])
  order = np.random.default_rng(0).permutation(len(a))
  many = pickle.loads(pickle.dumps(b)).read_many(order)  # as a grain worker gets it
  assert [bytes(r) for r in many] == [bytes(a[i]) for i in order]


def _cfg(path: str):
  c = hl.get_config()
  c.data.path = path
  c.data.num_workers = 0
  c.data.read_threads = 1
  c.data.sampling_rate = 100.0
  c.data.window_s = 2.0
  return c


def _assert_batches_equal(x, y):
  assert x.keys() == y.keys()
  for k in x:
    np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_and_resume_equal_local(dirs):
  local, remote, _ = dirs
  it_local = iter(pipeline.make_train_dataset(_cfg(local).data, 8, seed=3))
  it_remote = iter(pipeline.make_train_dataset(_cfg(remote).data, 8, seed=3))
  for _ in range(3):
    _assert_batches_equal(next(it_local), next(it_remote))
  state = it_remote.get_state()
  expected = [next(it_local) for _ in range(2)]
  resumed = iter(pipeline.make_train_dataset(_cfg(remote).data, 8, seed=3))
  resumed.set_state(state)
  for e in expected:
    _assert_batches_equal(e, next(resumed))


def test_eval_batches_equal_local(dirs):
  local, remote, _ = dirs
  ds_local, _ = pipeline.make_eval_dataset(_cfg(local).data, "val", 8)
  ds_remote, _ = pipeline.make_eval_dataset(_cfg(remote).data, "val", 8)
  assert len(ds_local) == len(ds_remote) > 1
  for a, b in zip(ds_local, ds_remote):
    _assert_batches_equal(a, b)


def test_grain_worker_processes_read_the_bucket(dirs):
  local, remote, _ = dirs
  c = _cfg(remote)
  c.data.num_workers = 2  # the source is pickled into spawned processes: their own clients.
  it_remote = iter(pipeline.make_train_dataset(c.data, 8, seed=4))
  it_local = iter(pipeline.make_train_dataset(_cfg(local).data, 8, seed=4))
  for _ in range(3):
    _assert_batches_equal(next(it_local), next(it_remote))


def test_mixture_and_config_validation_take_bucket_paths(dirs):
  local, remote, _ = dirs
  assert mixture.parse_sources(_cfg(remote).data) == [mixture.Source(remote, 1.0)]
  c = _cfg(f"{remote}:3,{local}:1")
  assert mixture.parse_sources(c.data) == [mixture.Source(remote, 0.75),
                                           mixture.Source(local, 0.25)]
  it = iter(pipeline.make_train_dataset(c.data, 8, seed=1))
  assert set(next(it)["source"]) <= {0, 1}
  config_validation.validate(_cfg(remote))
  with pytest.raises(ConfigError, match="data.path.*gs://.*nowhere"):
    config_validation.validate(_cfg(f"{remote}/nowhere"))


def _flip(path: str, offset: int) -> None:
  data = bytearray(storage.read_bytes(path))
  data[offset] ^= 0x20
  storage.write_bytes(path, bytes(data))


def test_corrupt_truncated_and_missing_shards_in_the_bucket(dirs):
  local, remote, _ = dirs
  bad = f"{storage.dirname(remote)}/damaged"
  for f in storage.walk_files(local):
    storage.upload(os.path.join(local, f), f"{bad}/{f}")
  train = [f"{bad}/train.tfrecord-{g:05d}-of-00003" for g in range(3)]
  val = f"{bad}/val.tfrecord-00000-of-00003"
  off = tfrecord.read_index(train[0])
  _flip(train[0], int(off[3]) + tfrecord.HEADER_BYTES + 40)  # payload of record 3
  _flip(val, 0)  # length header of the first val record
  cut = tfrecord.read_index(train[1])
  storage.write_bytes(train[1], storage.read_bytes(train[1])[:int(cut[-2]) + 5])  # last cut
  lost = tfrecord.read_index(train[2]).size - 1
  storage.remove(train[2])

  with pytest.raises(spec_lib.SpecError, match=f"shard {train[2]} is listed"):
    ShardedSource(bad, "train")
  src = ShardedSource(bad, "val")
  with pytest.raises(tfrecord.CorruptRecordError, match=f"{val} at byte offset 0: length CRC"):
    src[0]

  before = source_lib.skipped_records()
  src = ShardedSource(bad, "train", skip_corrupt=True)
  assert source_lib.skipped_ids()[f"{train[2]}:missing"] == lost
  ref = ShardedSource(local, "train")
  got = src.read_many(range(len(src)))
  n0 = len(off) - 1
  bad_rows = [i for i, r in enumerate(got) if r is None]
  assert bad_rows == [3, len(src) - 1] and len(src) == len(ref) - lost
  for i, r in enumerate(got):
    if r is not None:
      assert bytes(r) == bytes(ref[i])
  assert [src[i] is None for i in bad_rows] == [True, True]  # a re-read is not counted again
  assert source_lib.skipped_records() - before == lost + 2 and n0 > 3
  c = _cfg(bad)
  c.data.skip_corrupt = True
  batch = next(iter(pipeline.make_train_dataset(c.data, 16, seed=0)))
  assert batch["seg1"].shape[0] == 16  # skipped records are replaced: batches keep their size.


def test_demo_data_beside_a_bucket_workdir(gcs_emulator):
  from ecgjax import demo_data  # pylint: disable=g-import-not-at-top
  c = _cfg("")
  c.data.synthetic.update(num_records=12, num_shards=2, duration_s=4.0)
  root = f"{gcs_emulator}/gcs_demo_{os.getpid()}"
  demo_data.resolve_data_path(c, f"{root}/run")
  assert c.data.path == f"{root}/synthetic_shards"
  assert ShardedSource(c.data.path, "train")[0] is not None


def test_numpy_archive_in_a_bucket_converts_like_the_local_file(gcs_emulator, tmp_path):
  from tests.test_readers import _ecg  # pylint: disable=g-import-not-at-top
  np.savez(tmp_path / "d.npz", x=np.stack([_ecg(2, 250, 4, seed=i) for i in range(6)]))
  (tmp_path / "d.json").write_text(json.dumps({"sampling_rate": 250, "leads": ["I", "II"]}))
  root = f"{gcs_emulator}/gcs_numpy_{os.getpid()}"
  for f in ("d.npz", "d.json"):
    storage.upload(str(tmp_path / f), f"{root}/{f}")
  flags = ["--format=numpy", "--num_shards=2", "--workers=1", "--quiet"]
  parse = convert.build_parser().parse_args
  local = convert.convert(parse([*flags, f"--input={tmp_path}/d.npz", f"--output={tmp_path}/o"]))
  remote = convert.convert(parse([*flags, f"--input={root}/d.npz", f"--output={root}/o"]))
  assert remote["source"] == f"{root}/d.npz" and remote["num_records"] == local["num_records"] == 6
  assert remote["lead_order"] == ["I", "II"]  # the sidecar came along.
  for e in local["shards"]:
    assert storage.read_bytes(f"{tmp_path}/o/{e['file']}") == storage.read_bytes(
        f"{root}/o/{e['file']}")
  with pytest.raises(ValueError, match="copy wfdb archives to a local disk"):
    convert.convert(parse(["--format=wfdb", f"--input={root}", f"--output={tmp_path}/w"]))
