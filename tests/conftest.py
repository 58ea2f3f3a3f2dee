"""Shared fixtures: a small synthetic shard directory and a micro training config."""
import os
import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def requires_shared(sub: str) -> pathlib.Path:
  path = SHARED_DATA / sub
  if not path.exists():
    pytest.skip(f"{path} not present (real ECG data lives in ../shared/data)")
  return path


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> str:
  from data_pipelines import convert
  out = str(tmp_path_factory.mktemp("synthetic_shards"))
  args = convert.build_parser().parse_args([
      "--format=synthetic", f"--output={out}", "--num_records=240", "--num_shards=3",
      "--workers=1", "--sampling_rate=250", "--quiet"])
  convert.convert(args)
  return out


def micro_config(data_path: str, objective: str = "hl"):
  """A model and input small enough to compile and step quickly on a 2-core CPU."""
  import importlib
  cfg = importlib.import_module(f"configs.{objective}").get_config("demo")
  cfg.data.path = data_path
  cfg.total_steps = 6
  cfg.global_batch = 8
  cfg.log_every = 2
  cfg.checkpoint_every = 3
  cfg.plot_every = 1000
  cfg.probe_at_end = False
  cfg.async_checkpointing = False
  cfg.data.window_s = 2.0
  cfg.data.device_prefetch = 1
  cfg.data.read_threads = 1
  cfg.data.prefetch = 8
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, local_depth=1,
                   decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64,
                   proj_hidden=32, proj_dim=16)
  cfg.optim.warmup_steps = 2
  return cfg


# gcsfs >= 2025.x probes each bucket's type over gRPC first (60 s timeout against an emulator);
# it reads this at import, so it is set before any test imports gcsfs.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _send_generation_headers() -> None:
  """Object downloads carry ``x-goog-generation`` / ``x-goog-metageneration``, as real GCS sends.

  gcp-storage-emulator omits them; tensorstore (Orbax's OCDBT writer) then fails on its
  second read of a manifest with "Malformed StorageGeneration".
  """
  from gcp_storage_emulator import server as server_mod
  from gcp_storage_emulator.handlers import objects
  original = objects.download
  if getattr(original, "ecgjax_generation_headers", False):
    return

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # pylint: disable=broad-except  (the original answers 404)
      pass
    return original(request, response, storage, *args, **kwargs)
  download.ecgjax_generation_headers = True
  objects.download = download  # objects.get(alt=media) calls it by this name.
  for _, handlers in server_mod.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is original:
        handlers[method] = download


@pytest.fixture(scope="session")
def gcs_emulator():
  """A real GCS JSON API server (gcp-storage-emulator) in this process: ``gs://ecgjax-test``.

  gcsfs and google-cloud-storage find it through ``STORAGE_EMULATOR_HOST``, tensorstore (Orbax)
  through ``TENSORSTORE_GCS_HTTP_URL``; subprocesses inherit both. Yields the bucket URL.
  """
  server_mod = pytest.importorskip("gcp_storage_emulator.server")
  pytest.importorskip("gcsfs")
  import http.server
  import logging
  import gcsfs
  _send_generation_headers()
  # Concurrent ranged reads (ShardedSource.read_many) overflow the default listen backlog
  # of 5 of this single-threaded server: dropped connects retry after 1 s, 3 s, ...
  http.server.HTTPServer.request_queue_size = max(http.server.HTTPServer.request_queue_size, 1024)
  port = _free_port()
  server = server_mod.create_server("localhost", port, in_memory=True,
                                    default_bucket="ecgjax-test")
  server.start()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are expected.
  url = f"http://localhost:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  gcsfs.GCSFileSystem.clear_instance_cache()
  try:
    yield "gs://ecgjax-test"
  finally:
    server.stop()
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    # The class method: an instance made here, after the emulator left, would look for
    # Google credentials (5 metadata-server retries, ~15 s).
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture(params=["local", "gcs"])
def storage_root(request, tmp_path) -> str:
  """Each test twice: in a local directory and under its own prefix in the emulated bucket."""
  if request.param == "local":
    return str(tmp_path)
  bucket = request.getfixturevalue("gcs_emulator")
  return f"{bucket}/{request.node.name.replace('[', '_').rstrip(']')}_{os.getpid()}"
