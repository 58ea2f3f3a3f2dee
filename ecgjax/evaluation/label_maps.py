"""Label mappings shared by task definitions: source label names -> task classes.

A task maps the label vocabulary of its shards (spec.json ``label_names``) onto its own
classes. A class lists source labels; a record is positive when it carries any of them.
An *exclusive* class is positive only when the record carries at least one label and all
of its labels are in the list (used for NORM from SNOMED-CT rhythm codes: a normal ECG is
a sinus rhythm with no other finding).

SNOMED-CT -> PTB-XL superclass: each CinC-2021 code is matched to the PTB-XL SCP statement
it names, and takes that statement's ``diagnostic_class`` in scp_statements.csv. Codes whose
SCP statement is a form/rhythm statement without a diagnostic class (T-wave abnormal ->
TAB_, T inversion -> INVT, LV high voltage -> VCLVH, ...) map to no superclass, exactly as
in PTB-XL's own superclass labels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")

# code: (superclass or None, SCP-ECG statement it corresponds to / why none).
SNOMED_TO_SUPERCLASS: dict[str, tuple[str | None, str]] = {
    # MI
    "164865005": ("MI", "myocardial infarction -> IMI/AMI/... (MI)"),
    "57054005": ("MI", "acute myocardial infarction -> AMI"),
    "54329005": ("MI", "anterior myocardial infarction -> AMI"),
    # STTC
    "428750005": ("STTC", "nonspecific ST-T abnormality -> NDT"),
    "55930002": ("STTC", "ST changes -> NST_"),
    "164930006": ("STTC", "ST interval abnormal -> NST_"),
    "111975006": ("STTC", "prolonged QT interval -> LNGQT"),
    "426434006": ("STTC", "anterior ischemia -> ISCAN"),
    "164861001": ("STTC", "myocardial ischemia -> ISC_"),
    "425419005": ("STTC", "inferior ischaemia -> ISCIN"),
    "425623009": ("STTC", "lateral ischaemia -> ISCLA"),
    # CD
    "270492004": ("CD", "1st degree AV block -> 1AVB"),
    "195042002": ("CD", "2nd degree AV block -> 2AVB"),
    "27885002": ("CD", "complete heart block -> 3AVB"),
    "698252002": ("CD", "nonspecific intraventricular conduction disorder -> IVCD"),
    "59118001": ("CD", "right bundle branch block -> CRBBB"),
    "713427006": ("CD", "complete right bundle branch block -> CRBBB"),
    "713426002": ("CD", "incomplete right bundle branch block -> IRBBB"),
    "164909002": ("CD", "left bundle branch block -> CLBBB"),
    "733534002": ("CD", "complete left bundle branch block -> CLBBB"),
    "251120003": ("CD", "incomplete left bundle branch block -> ILBBB"),
    "445118002": ("CD", "left anterior fascicular block -> LAFB"),
    "445211001": ("CD", "left posterior fascicular block -> LPFB"),
    "74390002": ("CD", "Wolff-Parkinson-White -> WPW"),
    # HYP
    "164873001": ("HYP", "left ventricular hypertrophy -> LVH"),
    "89792004": ("HYP", "right ventricular hypertrophy -> RVH"),
    "67741000119109": ("HYP", "left atrial enlargement -> LAO/LAE"),
    "253352002": ("HYP", "left atrial abnormality -> LAO/LAE"),
    "446358003": ("HYP", "right atrial hypertrophy -> RAO/RAE"),
    # NORM (exclusive: only when every code of the record is one of these)
    "426783006": ("NORM", "sinus rhythm (SR) with no other finding -> NORM"),
    "426177001": ("NORM", "sinus bradycardia (SBRAD) with no other finding -> NORM"),
    "427084000": ("NORM", "sinus tachycardia (STACH) with no other finding -> NORM"),
    "427393009": ("NORM", "sinus arrhythmia (SARRH) with no other finding -> NORM"),
    # No superclass: SCP form/rhythm statements without a diagnostic class.
    "164934002": (None, "T-wave abnormal -> TAB_ (form, no diagnostic class)"),
    "59931005": (None, "T-wave inversion -> INVT (form, no diagnostic class)"),
    "55827005": (None, "left ventricular high voltage -> VCLVH (form, no diagnostic class)"),
    "164931005": (None, "ST elevation -> STE_ (form, no diagnostic class)"),
    "429622005": (None, "ST depression -> STD_ (form, no diagnostic class)"),
    "284470004": (None, "premature atrial contraction -> PAC (form/rhythm)"),
    "427172004": (None, "premature ventricular contractions -> PVC (form)"),
    "713422000": (None, "atrial tachycardia (rhythm)"),
    "251187003": (None, "atrial escape beat (rhythm)"),
    "251170000": (None, "blocked premature atrial contraction (rhythm)"),
    "365413008": (None, "poor R wave progression (no SCP diagnostic statement)"),
}


def snomed_superclass_classes() -> tuple[tuple[str, tuple[str, ...]], ...]:
  """Task ``classes`` for PTB-XL superclasses over a SNOMED-CT label vocabulary."""
  return tuple((c, tuple(k for k, (s, _) in SNOMED_TO_SUPERCLASS.items() if s == c))
               for c in SUPERCLASSES)


def map_labels(y: np.ndarray, source_names: Sequence[str],
               classes: Sequence[tuple[str, Sequence[str]]],
               exclusive: Sequence[str] = (), allow_empty: bool = False) -> np.ndarray:
  """[N, S] 0/1 source labels -> [N, C] 0/1 task labels (see the module docstring).

  Source labels a class names but the vocabulary lacks are ignored (a code may simply not
  occur in a dataset). A class none of whose labels exist raises, naming the class, unless
  ``allow_empty`` (an external test set may lack a class; it then has no positives).
  """
  y = np.asarray(y) > 0
  index = {n: i for i, n in enumerate(source_names)}
  out = np.zeros((y.shape[0], len(classes)), np.float32)
  for c, (name, labels) in enumerate(classes):
    cols = [index[l] for l in labels if l in index]
    if not cols and allow_empty:
      continue
    if not cols:
      raise ValueError(f"class {name!r}: none of its labels {list(labels)[:8]} is in the "
                       f"shards' label_names {list(source_names)[:20]}")
    hit = y[:, cols]
    if name in exclusive:
      others = np.delete(y, cols, axis=1)
      out[:, c] = hit.any(1) & ~others.any(1)
    else:
      out[:, c] = hit.any(1)
  return out
