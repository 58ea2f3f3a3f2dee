"""ecgjax: JAX/Flax NNX ECG foundation models.

``ecgjax.load_pretrained(EXPORT_DIR)`` is imported lazily, so importing a submodule (the
converters do, in worker processes) does not pull in JAX and Flax.
"""


def __getattr__(name: str):
  if name == "load_pretrained":
    from ecgjax.inference.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
    return load_pretrained
  raise AttributeError(f"module 'ecgjax' has no attribute {name!r}")
