"""The export as a self-describing artefact: numpy reference loader, model card, file modes.

``test_numpy_encoder_without_jax`` is the CI check that runs in a venv without JAX
(.ci/run makes the fixture with the main venv first and passes its directory in
ECGJAX_REFERENCE_FIXTURE); the other tests run in the main suite.
"""
import importlib.util
import json
import os
import re
import sys

import numpy as np
import pytest

from tests import reference_fixture

TOLERANCE = 1e-4
FIXTURE_ENV = "ECGJAX_REFERENCE_FIXTURE"


def _module_from_file(path: str):
  spec = importlib.util.spec_from_file_location("export_numpy_encoder", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _check_cases(fixture_dir: str) -> int:
  """The copy inside the export reproduces every stored ecgjax embedding."""
  export_dir = os.path.join(fixture_dir, "export")
  ref = _module_from_file(os.path.join(export_dir, "numpy_encoder.py")).load(export_dir)
  cases = reference_fixture.load_cases(fixture_dir)
  assert {c["mode"] for c in cases} == {"rpeak", "first", "mean"} and len(cases) >= 18
  for c in cases:
    got = ref.embed(c["signal"], c["fs"], c["leads"], mode=c["mode"], r_peaks=c["r_peaks"])
    assert got.shape == c["expected"].shape == (ref.embedding_dim,)
    err = float(np.abs(got - c["expected"]).max())
    assert err <= TOLERANCE, f"{c['name']} mode={c['mode']}: max |diff| {err:.2e}"
  return len(cases)


def test_numpy_encoder_without_jax():
  fixture_dir = os.environ.get(FIXTURE_ENV)
  if not fixture_dir:
    pytest.skip(f"runs in CI's no-JAX venv ({FIXTURE_ENV}=DIR from "
                "`python -m tests.reference_fixture DIR`)")
  for name in ("jax", "jaxlib", "flax", "torch"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable in this venv"
  assert _check_cases(fixture_dir) >= 18
  assert not {"jax", "flax", "torch"} & set(sys.modules)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
  from tests.conftest import requires_shared
  requires_shared("ptbxl")
  requires_shared("cinc2021_samples")
  return reference_fixture.make(str(tmp_path_factory.mktemp("reference")))


def test_numpy_encoder_matches_load_pretrained(fixture_dir):
  """Same check in the main venv, against the module shipped in the package too."""
  _check_cases(fixture_dir)
  from ecgjax_reference import numpy_encoder
  with open(numpy_encoder.__file__, "rb") as a, open(
      os.path.join(fixture_dir, "export", "numpy_encoder.py"), "rb") as b:
    assert a.read() == b.read()


def test_joint_record_normalisation_matches(tmp_path):
  import ecgjax
  from ecgjax_reference import numpy_encoder
  enc = reference_fixture.make_export(str(tmp_path / "joint"), "record_joint")
  rng = np.random.default_rng(1)
  sig = rng.standard_normal((3, 1800)).astype(np.float32) * np.array([[0.2], [1.5], [0.6]])
  a = ecgjax.load_pretrained(enc).embed(sig, 360, ["V2", "I", "aVF"], mode="mean")
  c = numpy_encoder.load(enc).embed(sig, 360, ["V2", "I", "aVF"], mode="mean")
  assert np.abs(a[0] - c).max() <= TOLERANCE
  r = ecgjax.load_pretrained(reference_fixture.make_export(str(tmp_path / "rec"))).embed(
      sig, 360, ["V2", "I", "aVF"], mode="mean")
  assert np.abs(a - r).max() > 10 * TOLERANCE  # the mode reached the encoder's input.


def test_dataset_normalisation_and_encoder_only_equals_full(tmp_path):
  import ecgjax
  from ecgjax.inference import export
  from ecgjax_reference import numpy_encoder
  full = reference_fixture.make_export(str(tmp_path / "full"), "dataset", include_heads=True)
  enc = reference_fixture.make_export(str(tmp_path / "enc"), "dataset")
  names_full, names_enc = set(export.load_params(full)), set(export.load_params(enc))
  heads = names_full - names_enc
  assert {n.split("/")[0] for n in heads} == {
      "decoder_in", "mask_token", "decoder_lead_embed", "decoder_pos_embed", "decoder_blocks",
      "decoder_norm", "decoder_out", "proj_in", "proj_out"}
  assert not any(n.startswith(("decoder", "proj", "mask")) for n in names_enc)
  assert json.load(open(os.path.join(enc, "config.json")))["heads"] is False
  rng = np.random.default_rng(0)
  sig = rng.standard_normal((3, 1800)).astype(np.float32) * 0.3 + 0.05
  leads = ["V2", "I", "aVF"]
  a = ecgjax.load_pretrained(full).embed(sig, 360, leads, mode="mean")
  b = ecgjax.load_pretrained(enc).embed(sig, 360, leads, mode="mean")
  np.testing.assert_array_equal(a, b)
  c = numpy_encoder.load(enc).embed(sig, 360, leads, mode="mean")
  assert np.abs(a[0] - c).max() <= TOLERANCE
  model, meta = export.load_model(enc)
  assert meta["heads"] is False
  assert float(np.abs(np.asarray(model.proj_in.kernel[...])).max()) == 0.0
  # A version-1 export (no "heads" key, heads included) still loads; half a head set does not.
  cfg_path = os.path.join(full, "config.json")
  meta = json.load(open(cfg_path))
  del meta["heads"]
  json.dump(meta, open(cfg_path, "w"))
  assert export.load_model(full)[1]["heads"] is True
  from safetensors.numpy import save_file
  params = export.load_params(full)
  save_file({k: v for k, v in params.items() if not k.startswith("proj_")},
            os.path.join(full, "params.safetensors"))
  with pytest.raises(ValueError, match=r"missing \['proj_in/bias'"):
    export.load_model(full)


def test_export_files_card_and_damage(tmp_path):
  import ecgjax
  from ecgjax.inference import export
  from ecgjax_reference import numpy_encoder
  old = os.umask(0o077)  # a private umask must not make a shared export unreadable.
  try:
    out = reference_fixture.make_export(str(tmp_path / "exp"))
  finally:
    os.umask(old)
  assert os.stat(out).st_mode & 0o777 == 0o755
  files = sorted(os.listdir(out))
  assert files == ["README.md", "config.json", "numpy_encoder.py", "params.safetensors"]
  for f in files:
    assert os.stat(os.path.join(out, f)).st_mode & 0o777 == 0o644, f
  card = open(os.path.join(out, "README.md")).read()
  for needle in ("## Preprocessing contract", "R peak", "RMS",
                 "concat(pooled, mean)", "## Tensors", "Licence:", "encoder only"):
    assert needle in card, needle
  # Every tensor row of the card names real tensors (blocks written once as blocks/{i}).
  names = set(export.load_params(out))
  listed = re.findall(r"^\| `([^`]+)` \| \[", card, flags=re.M)
  assert listed
  expanded = set()
  for row in listed:
    m = re.match(r"^(\S+) \(i = 0\.\.(\d+)\)$", row)
    expanded |= ({m.group(1).replace("{i}", str(i)) for i in range(int(m.group(2)) + 1)}
                 if m else {row})
  assert expanded == names
  assert "blocks/0/attn/query/kernel" in names and "encoder_blocks" not in card
  # A truncated params.safetensors is named by both loaders.
  path = os.path.join(out, "params.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match=re.escape(path)):
    ecgjax.load_pretrained(out)
  with pytest.raises(ValueError, match=re.escape(path)):
    numpy_encoder.load(out)


def test_card_reports_training_data_and_probe(tmp_path):
  from ecgjax.inference import model_card
  run = tmp_path / "run"
  (run / "probe").mkdir(parents=True)
  data = tmp_path / "shards"
  data.mkdir()
  (run / "config.json").write_text(json.dumps(
      {"data": {"path": str(data)}, "global_batch": 8, "total_steps": 3,
       "optim": {"lr": 3e-4}, "seed": 0}))
  (data / "spec.json").write_text(json.dumps(
      {"format": "ptbxl", "source": "/data/ptbxl", "num_records": 1987,
       "splits": {"train": 1490, "val": 242, "test": 255}, "rejects": {"count": 0}}))
  row = {"label_fraction": 1.0, "num_train": 1490,
         "test": {"macro_auroc": 0.8123, "macro_auroc_ci": [0.79, 0.83], "macro_f1": 0.61}}
  res = {"encoder": {"kind": "export"}, "results": [row],
         "task": {"data_path": str(data), "num_classes": 5, "probe": "logistic"},
         "splits": {"counts": {"train": 1490, "val": 242, "test": 255}}}
  (run / "probe" / "results.json").write_text(json.dumps({"pretrained": res, "random": res}))
  out = reference_fixture.make_export(str(tmp_path / "exp"))
  card = open(model_card.write(out, str(run))).read()
  assert "1987 records" in card and "CC BY 4.0" in card and "Wagner" in card
  assert "| pretrained | 1 | 1490 | 0.812 [0.790, 0.830] | 0.610 |" in card
  assert "peak learning rate 0.0003" in card and '"lr": 0.0003' in card
