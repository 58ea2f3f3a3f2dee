"""The Beam runner of the converter (DirectRunner) writes the same shards as the local one."""
import pytest

from data_pipelines import beam_convert, convert
from ecgjax.data import spec as spec_lib

beam = pytest.importorskip("apache_beam", reason="apache-beam not installed (pip install '.[beam]')")


def test_beam_matches_local_converter(tmp_path):
  argv = ["--format=synthetic", "--num_records=30", "--num_shards=3", "--sampling_rate=100",
          "--quiet"]
  local = convert.convert(convert.build_parser().parse_args([*argv, f"--output={tmp_path / 'l'}"]))
  beam_spec = beam_convert.run(
      convert.build_parser().parse_args([*argv, f"--output={tmp_path / 'b'}"]),
      ["--runner=DirectRunner"])
  assert beam_spec["splits"] == local["splits"] and beam_spec["shards"] == local["shards"]
  assert beam_spec["label_counts"] == local["label_counts"]
  for s in local["shards"]:
    assert (tmp_path / "l" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()
  assert spec_lib.load(str(tmp_path / "b"))["num_records"] == 30
