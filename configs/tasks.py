r"""Clinical task suite: frozen-encoder probes on several tasks in one job.

  python main.py --config=configs/tasks.py --config.pretrained=EXPORT[,EXPORT2,random] \
      --config.data_root=DIR_WITH_CONVERTED_SHARDS --workdir=DIR

Each entry of ``tasks`` is data (add one here, or in a copy of this file, without code):
  data        shard directory (relative paths are under ``data_root``)
  classes     ((class, (source label, ...)), ...): a record is positive for a class when
              it carries any of the listed labels of the shards' spec.json label_names
  exclusive   classes positive only when *all* of the record's labels are in their list
  keep        source labels; records with none of them are dropped ('' = keep all)
  encoding    'multi_hot' (one sigmoid per class) | 'class_index' (softmax; a record must
              fall in exactly one class, others are dropped and counted)
  metrics     first one is the headline in tasks.md / tasks.png; see tasks.METRICS
  split       'shards' (the shards' train/val/test; a missing val is carved from train) |
              'mitbih_inter_patient' (shards converted with that split scheme) |
              'external' (the probe of ``train_task`` applied unchanged to every record here)
  groups      ((name, record_id prefix), ...): also report the headline metric per group
The arg ``small`` lowers the bootstrap and fractions for a CPU run.
"""
import ml_collections

from configs import probe as probe_config
from ecgjax.evaluation import label_maps

SUPER = tuple((c, (c,)) for c in label_maps.SUPERCLASSES)
AAMI = tuple((c, (c,)) for c in ("N", "S", "V", "F", "Q"))


def task(**kw) -> ml_collections.ConfigDict:
  t = {"data": "", "classes": (), "exclusive": (), "keep": (), "encoding": "multi_hot",
       "metrics": ("macro_auroc",), "split": "shards", "train_task": "", "groups": ()}
  unknown = set(kw) - set(t)
  if unknown:
    raise ValueError(f"task fields {sorted(unknown)} unknown; expected {sorted(t)}")
  t.update(kw)
  return ml_collections.ConfigDict(t)


def get_config(arg: str | None = None):
  variants = {v for v in (arg or "").split(",") if v}
  c = probe_config.get_config(",".join(variants - {"small"}) or None)
  c.job = "tasks"
  c.pretrained = ""            # comma-separated export / run dirs and/or 'random'
  c.handcrafted = True         # add the FFT + percentile baseline (evaluation/handcrafted.py)
  c.data_root = "data/tasks"   # where relative task data paths live
  c.run = ""                   # comma-separated task names to run ('' = all)
  c.label_fractions = (0.1, 1.0)
  c.read_threads = 2           # shard read threads while embedding
  c.tasks = ml_collections.ConfigDict({
      "ptbxl_superclass": task(
          data="ptbxl", classes=SUPER, metrics=("macro_auroc", "macro_f1")),
      "ptbxl_mi": task(
          data="ptbxl", classes=(("MI", ("MI",)),), keep=("MI", "NORM"),
          metrics=("auroc", "f1")),
      "mitbih_aami_beats": task(
          data="mitbih_beats", classes=AAMI, encoding="class_index",
          metrics=("macro_f1", "se_ppv", "accuracy"), split="mitbih_inter_patient"),
      "mitbih_af": task(
          data="mitbih_rhythm10s", classes=(("AF_AFL", ("(AFIB", "(AFL")),),
          metrics=("auroc", "f1"), split="mitbih_inter_patient"),
      "cinc2021_external": task(
          data="cinc2021", classes=label_maps.snomed_superclass_classes(),
          exclusive=("NORM",), metrics=("macro_auroc",), split="external",
          train_task="ptbxl_superclass",
          groups=(("Georgia", "E"), ("PTB-XL-HR", "HR"), ("Ningbo", "JS"))),
  })
  if "small" in variants:
    c.bootstrap = 200
    c.l2_grid = (1e-3, 1e-2, 1e-1, 1.0)
    c.max_iter = 200
  return c
