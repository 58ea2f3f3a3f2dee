"""Fine-tune job: layer-wise lr groups, frozen MAE parts, end to end on synthetic shards."""
import json
import os

import jax
import numpy as np
from flax import nnx

import configs.finetune as finetune_cfg
from ecgjax.evaluation import finetune
from ecgjax.inference import encoder as encoder_lib
from ecgjax.inference import export
from tests.trained_run import trained_run  # noqa: F401  (fixture)


def test_layer_labels_and_decay(trained_run):  # noqa: F811
  enc = encoder_lib.load(os.path.join(trained_run, "export"))
  model = finetune.Classifier(enc.model, 3, rngs=nnx.Rngs(0))
  depth = int(enc.model.cfg.depth)
  labels = jax.tree_util.tree_map_with_path(lambda p, _: finetune.layer_label(p, depth),
                                            nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  flat = {export.param_name(p): v
          for p, v in jax.tree_util.tree_leaves_with_path(labels)}
  assert flat["head/kernel"] == "head"
  assert all(v == "frozen" for k, v in flat.items() if "decoder" in k or k.startswith("encoder/proj"))
  assert {v for k, v in flat.items() if k.startswith("encoder/blocks/0/")} == {"block0"}
  assert flat["encoder/patch_embed/kernel"] == "embed"
  # One update: frozen params do not move, lower blocks move less than the head's scale.
  cfg = finetune_cfg.get_config().optim
  cfg.warmup_steps = 0
  tx = finetune.make_optimizer(cfg, depth)
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(jax.numpy.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  upd = {export.param_name(p): np.abs(np.asarray(v)).max()
         for p, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(updates))}
  assert all(v == 0 for k, v in upd.items() if "decoder" in k)
  block0 = max(v for k, v in upd.items() if k.startswith("encoder/blocks/0/") and "kernel" in k)
  assert 0 < block0 < upd["head/kernel"] * 0.9  # decay^(depth) < 1 at the bottom


def test_finetune_end_to_end(trained_run, synthetic_shards, tmp_path):  # noqa: F811
  c = finetune_cfg.get_config()
  c.pretrained = os.path.join(trained_run, "export")
  c.data.path = synthetic_shards
  c.optim.total_steps = 6
  c.optim.warmup_steps = 2
  c.eval_every = 3
  c.batch_size = 8
  c.bootstrap = 50
  c.plots = False
  res = finetune.run(c, str(tmp_path))
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["best_step"] in (3, 6) and len(saved["history"]) == 2
  t = saved["results"][0]["test"]
  assert 0.0 <= t["macro_auroc"] <= 1.0 and len(t["per_class"]) == 6
  assert t["macro_auroc_ci"][0] <= t["macro_auroc"] <= t["macro_auroc_ci"][1]
  assert res["task"]["label_encoding"] == "class_index"
