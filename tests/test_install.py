"""setup.py declares what the runtime imports, tested ranges, constraints and console scripts."""
import ast
import importlib
import pathlib
import re
import sys

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNTIME = ("ecgjax", "data_pipelines", "configs", "ecgjax_reference", "main.py")
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"absl": "absl-py", "orbax": "orbax-checkpoint", "tensorflow_datasets":
                "tensorflow-datasets", "apache_beam": "apache-beam", "ml_collections":
                "ml-collections", "tensorboardX": "tensorboardx"}
OPTIONAL = {"apache-beam": "beam"}  # imported only by data_pipelines/beam_convert.py.
INDIRECT = {"protobuf",             # tensorflow_datasets' proto module needs it.
            "gcsfs"}                # fsspec loads it for gs:// URLs (ecgjax/storage.py).


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _setup_kwargs() -> dict:
  call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
              if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
  return {k.arg: ast.literal_eval(k.value) for k in call.keywords
          if k.arg in ("install_requires", "extras_require", "entry_points")}


def _runtime_imports() -> set[str]:
  files = []
  for name in RUNTIME:
    p = ROOT / name
    files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
  out = set()
  for f in files:
    for n in ast.walk(ast.parse(f.read_text())):
      if isinstance(n, ast.Import):
        out |= {a.name.split(".")[0] for a in n.names}
      elif isinstance(n, ast.ImportFrom) and n.level == 0:
        out.add(n.module.split(".")[0])
  local = {"ecgjax", "data_pipelines", "configs", "ecgjax_reference"}
  return {m for m in out - local if m not in sys.stdlib_module_names}


def test_install_requires_is_what_the_runtime_imports():
  kw = _setup_kwargs()
  required = {_norm(Requirement(r).name) for r in kw["install_requires"]}
  imported = {_norm(DISTRIBUTION.get(m, m)) for m in _runtime_imports()}
  assert imported - required == set(OPTIONAL)
  assert required - imported == INDIRECT
  assert "neurokit2" in kw["extras_require"]["bench"]
  assert "tensorboard" in kw["extras_require"]["viz"] and "tensorboard" in kw["extras_require"]["dev"]
  for dist, extra in OPTIONAL.items():
    assert dist in kw["extras_require"][extra]


def test_tested_ranges_and_constraints():
  reqs = {_norm(Requirement(r).name): Requirement(r) for r in _setup_kwargs()["install_requires"]}
  for name in ("jax", "flax", "orbax-checkpoint", "grain"):
    assert any(s.operator == "<" for s in reqs[name].specifier), f"{name} has no upper bound"
  pins = {}
  for line in (ROOT / "constraints.txt").read_text().splitlines():
    if line and not line.startswith("#"):
      name, version = line.split("==")
      pins[_norm(name)] = version
  for name, req in reqs.items():
    assert name in pins, f"constraints.txt does not pin {name}"
    assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {req.specifier}"
  assert reqs["jax"].specifier.contains("0.11.2")  # the GPU machines' version.


def test_console_scripts_point_at_main_functions():
  scripts = dict(s.replace(" ", "").split("=") for s in
                 _setup_kwargs()["entry_points"]["console_scripts"])
  assert set(scripts) == {"ecgjax-convert", "ecgjax-embed"}
  for target in scripts.values():
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))
