"""Synthetic labelled 12-lead ECGs: the embedded default dataset for demos and tests.

Every beat is a sum of Gaussian waves (P, Q, R, S, T, ...) in the spirit of ECGSYN, but
each wave drives a 3-D cardiac dipole (a vectorcardiogram) instead of one lead. The dipole
is projected on the standard lead axes, so precordial R-wave progression, reciprocal ST
changes and the Einthoven/Goldberger identities (III = II - I, aVR = -(I + II) / 2, ...)
come out of the geometry rather than being painted on per lead.

Classes differ in rhythm (rate, regularity, ectopy) and morphology (ST segment). Rate
ranges overlap, axes, amplitudes and intervals vary per record, and every record carries
noise, mains hum and baseline wander, so a linear probe has to rely on learned features
rather than one trivially separating statistic.

Coordinates: x points to the patient's left, y to the feet (inferior), z anterior.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ecgjax.data.records import STANDARD_LEADS, EcgRecord

# The four sinus classes may carry one or two premature atrial beats (narrow, early,
# abnormal P), so a single irregular interval is not by itself a class cue.
CLASS_NAMES: tuple[str, ...] = (
    "normal_sinus",           # 55-100 bpm, regular, normal morphology.
    "sinus_bradycardia",      # 38-62 bpm, otherwise normal.
    "sinus_tachycardia",      # 92-150 bpm, otherwise normal.
    "atrial_fibrillation",    # Irregularly irregular RR, no P waves, f-waves.
    "premature_ventricular",  # Sinus with early, wide, P-less beats (isolated or bigeminy).
    "st_elevation",           # Sinus with territorial ST elevation and reciprocal depression.
)
NUM_CLASSES = len(CLASS_NAMES)

GAIN_ADU_PER_MV = 1000.0

# Underlying (sinus or mean ventricular) rate range per class, bpm. Deliberately overlapping.
_HR_RANGE = {
    "normal_sinus": (55.0, 100.0),
    "sinus_bradycardia": (38.0, 62.0),
    "sinus_tachycardia": (92.0, 150.0),
    "atrial_fibrillation": (60.0, 150.0),
    "premature_ventricular": (55.0, 100.0),
    "st_elevation": (55.0, 105.0),
}

# Wave slots of one beat; each slot has one dipole direction per record.
# _PA is the P wave of premature atrial beats (ectopic focus, own direction); _V, _V2, _VT
# make up premature ventricular beats.
_P, _Q, _R, _S, _T1, _T2, _ST, _V, _V2, _VT, _PA = range(11)
_NUM_SLOTS = 11
# The ST plateau is a super-Gaussian exp(-u^4 / 2), everything else a Gaussian.
_SLOT_POWER = (2, 2, 2, 2, 2, 2, 4, 2, 2, 2, 2)
# Beat kinds.
_SINUS, _PVC, _PAC = 0, 1, 2
_PAC_CLASSES = ("normal_sinus", "sinus_bradycardia", "sinus_tachycardia", "st_elevation")

# Precordial electrode directions in the horizontal plane (degrees from +x towards +z)
# and their relative gains (chest electrodes sit closer to the heart than limb ones).
_PRECORDIAL_ANGLES = np.array([115.0, 94.0, 75.0, 60.0, 30.0, 0.0])
_PRECORDIAL_GAINS = np.array([1.5, 2.3, 2.3, 2.0, 1.6, 1.3])

_SPLIT_SALT = 0x5EC6  # Fixed so that a record's split depends on its index only.


def _unit(frontal_deg: np.ndarray | float, z: np.ndarray | float) -> np.ndarray:
  """Unit vector with anterior component z and the rest at an angle in the frontal plane.

  The frontal angle follows the hexaxial convention: 0 deg = lead I, +90 deg = aVF.
  """
  a = np.deg2rad(frontal_deg)
  r = np.sqrt(1.0 - np.square(z))
  return np.stack([r * np.cos(a), r * np.sin(a), np.broadcast_to(z, np.shape(a))], -1)


def _random_unit(rng: np.random.Generator) -> np.ndarray:
  v = rng.normal(size=3)
  return v / np.linalg.norm(v)


def _lead_matrix(rng: np.random.Generator) -> np.ndarray:
  """[8, 3] projections for the independent leads I, II, V1..V6.

  Chest electrode positions are jittered per record (placement, body habitus). Limb leads
  stay on the ideal hexaxial axes; the other four limb leads are derived from I and II.
  """
  angles = np.deg2rad(_PRECORDIAL_ANGLES + rng.uniform(-8.0, 8.0, 6))
  tilt = np.deg2rad(rng.uniform(-10.0, 15.0, 6))
  chest = np.stack([np.cos(angles) * np.cos(tilt), np.sin(tilt),
                    np.sin(angles) * np.cos(tilt)], -1)
  chest *= (_PRECORDIAL_GAINS * rng.uniform(0.85, 1.15, 6))[:, None]
  limb = np.array([[1.0, 0.0, 0.0], [0.5, np.sqrt(3.0) / 2.0, 0.0]])
  return np.concatenate([limb, chest], 0)


def _to_twelve_leads(indep: np.ndarray) -> np.ndarray:
  """[8, T] (I, II, V1..V6) -> [12, T] in STANDARD_LEADS order via Einthoven/Goldberger."""
  lead_i, lead_ii = indep[0], indep[1]
  return np.stack([
      lead_i, lead_ii, lead_ii - lead_i, -0.5 * (lead_i + lead_ii),
      lead_i - 0.5 * lead_ii, lead_ii - 0.5 * lead_i, *indep[2:]])


def _sinus_rr(rng: np.random.Generator, rr0: float, n: int) -> np.ndarray:
  """RR series with respiratory sinus arrhythmia, a Mayer-wave term and small jitter."""
  t = np.arange(n) * rr0
  rsa = rng.uniform(0.01, 0.05) * np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t
                                         + rng.uniform(0, 2 * np.pi))
  lf = rng.uniform(0.0, 0.03) * np.sin(2 * np.pi * rng.uniform(0.05, 0.12) * t
                                       + rng.uniform(0, 2 * np.pi))
  jitter = rng.normal(0.0, rng.uniform(0.002, 0.01), n)
  return rr0 * (1.0 + rsa + lf + jitter)


def _af_rr(rng: np.random.Generator, rr0: float, n: int) -> np.ndarray:
  """Irregularly irregular RR: i.i.d. gamma intervals, floored by AV-node refractoriness."""
  cv = rng.uniform(0.15, 0.35)
  shape = 1.0 / cv**2
  return np.maximum(rng.gamma(shape, rr0 / shape, n), 0.26)


def _premature(times: np.ndarray, idx: np.ndarray, coupling: np.ndarray) -> None:
  """Moves beats ``idx`` to ``coupling`` x the preceding interval after their predecessor."""
  times[idx] = times[idx - 1] + coupling * (times[idx] - times[idx - 1])


def _beat_times(rng: np.random.Generator, name: str, rr0: float,
                duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Beat fiducial times (s), the RR interval preceding each beat, and the beat kinds.

  Beats start before 0 and end after ``duration_s`` so that the edges are not empty.
  """
  if name == "atrial_fibrillation":
    rr = _af_rr(rng, rr0, int(np.ceil((duration_s + 2.0) / 0.26)) + 2)
  else:
    rr = _sinus_rr(rng, rr0, int(np.ceil((duration_s + 2.0) / (0.75 * rr0))) + 4)
  times = np.cumsum(rr) - rr[0] - rng.uniform(0.3, 0.3 + rr0)
  nb = times.size
  kind = np.full(nb, _SINUS)
  visible = np.nonzero((times > 0.3) & (times < duration_s - 0.3))[0]
  visible = visible[(visible >= 1) & (visible < nb - 1)]
  if name == "premature_ventricular":
    pvc = np.zeros(nb, bool)
    if rng.uniform() < 0.3:  # Bigeminy: every other beat.
      pvc[1 + rng.integers(2)::2] = True
    else:
      pvc[1:] = rng.uniform(size=nb - 1) < rng.uniform(0.06, 0.25)
      pvc[1:] &= ~pvc[:-1]  # No couplets.
    pvc[0] = False
    if visible.size and not np.any(pvc[visible]):
      mid = visible[np.argmin(np.abs(times[visible] - duration_s / 2))]
      pvc[mid - 1:mid + 2] = False
      pvc[mid] = True
    # The sinus node is not reset by a PVC, so the next sinus beat keeps its time
    # (full compensatory pause).
    idx = np.nonzero(pvc)[0]
    _premature(times, idx, rng.uniform(0.5, 0.68) + rng.normal(0.0, 0.02, idx.size))
    kind[idx] = _PVC
  elif name in _PAC_CLASSES and rng.uniform() < 0.3 and visible.size >= 2:
    # One or two premature atrial beats; each resets the sinus node, so later beats move
    # earlier too (non-compensatory pause).
    candidates = visible[::2]  # Never two adjacent beats.
    count = min(int(rng.integers(1, 3)), candidates.size)
    for k in np.sort(rng.choice(candidates, size=count, replace=False)):
      interval = times[k] - times[k - 1]
      coupling = rng.uniform(0.6, 0.8)
      times[k + 1:] -= (1.0 - coupling - rng.uniform(0.0, 0.15)) * interval
      _premature(times, np.array([k]), coupling)
      kind[k] = _PAC
  keep = times < duration_s + 0.6
  times, kind = times[keep], kind[keep]
  rr = np.concatenate([[rr[0]], np.diff(times)])
  return times, rr, kind


def _render(centers: np.ndarray, sigmas: np.ndarray, amps: np.ndarray, n: int,
            fs: float) -> np.ndarray:
  """[beats, slots] wave parameters (s, s, mV) -> [slots, n] waveforms.

  Each wave is evaluated only within a few widths of its centre and scattered with
  bincount, so cost scales with the number of beats, not beats x samples.
  """
  out = np.zeros((_NUM_SLOTS, n), np.float32)
  for s in range(_NUM_SLOTS):
    active = amps[:, s] != 0.0
    if not np.any(active):
      continue
    c = centers[active, s] * fs
    sg = sigmas[active, s] * fs
    a = amps[active, s]
    power = _SLOT_POWER[s]
    extent = 4.0 if power == 2 else 2.3
    half = int(np.ceil(extent * sg.max()))
    idx = np.round(c).astype(np.int64)[:, None] + np.arange(-half, half + 1)
    u = (idx - c[:, None]) / sg[:, None]
    w = a[:, None] * np.exp(np.float32(-0.5) * (u**power).astype(np.float32))
    valid = (idx >= 0) & (idx < n)
    out[s] = np.bincount(idx[valid], w[valid], minlength=n)
  return out


def _wave_parameters(rng: np.random.Generator, name: str, times: np.ndarray,
                     rr: np.ndarray, kind: np.ndarray) -> tuple[np.ndarray, ...]:
  """Per-beat centres, widths and amplitudes [beats, slots] and slot directions [3, slots]."""
  nb = times.size
  pvc = kind == _PVC
  qrs = rng.uniform(0.07, 0.105)
  pr = rng.uniform(0.12, 0.20)
  qtc = rng.uniform(0.37, 0.44)
  sig_t = rng.uniform(0.04, 0.06)
  sig_p = rng.uniform(0.018, 0.028)
  amp = {
      _P: rng.uniform(0.08, 0.25), _Q: rng.uniform(0.05, 0.2), _R: rng.uniform(0.8, 1.8),
      _S: rng.uniform(0.1, 0.4), _T1: rng.uniform(0.15, 0.45),
  }
  # Dipole directions: mean QRS axis 0..85 deg, posterior so that V1 is mostly negative.
  axis = rng.uniform(0.0, 85.0)
  dirs = np.zeros((3, _NUM_SLOTS))
  dirs[:, _P] = _unit(rng.uniform(40.0, 75.0), rng.uniform(-0.1, 0.3))
  dirs[:, _Q] = _unit(rng.uniform(150.0, 210.0), rng.uniform(0.4, 0.7))   # Septal.
  dirs[:, _R] = _unit(axis, rng.uniform(-0.45, -0.1))
  dirs[:, _S] = _unit(rng.uniform(200.0, 270.0), rng.uniform(-0.7, -0.4))  # Basal.
  t_dir = _unit(axis + rng.uniform(-20.0, 20.0), rng.uniform(0.0, 0.5))
  if name == "st_elevation":
    territory = rng.integers(3)
    if territory == 0:    # Anterior (LAD): V1-V4 up, inferior leads down.
      injury = _unit(rng.uniform(-40.0, 10.0), rng.uniform(0.75, 0.95))
    elif territory == 1:  # Inferior (RCA): II, III, aVF up; I, aVL down.
      injury = _unit(rng.uniform(95.0, 125.0), rng.uniform(-0.2, 0.2))
    else:                 # Lateral (LCx): I, aVL, V5-V6 up; III down.
      injury = _unit(rng.uniform(-30.0, 0.0), rng.uniform(-0.1, 0.3))
    st_amp = rng.uniform(0.1, 0.35)
    t_dir = t_dir + rng.uniform(0.3, 0.8) * injury  # Hyperacute T towards the injury.
    t_dir /= np.linalg.norm(t_dir)
  else:  # Non-specific ST deviation, small enough to overlap only the mildest STEMIs.
    injury = _random_unit(rng)
    st_amp = rng.uniform(0.0, 0.05)
  dirs[:, _T1] = dirs[:, _T2] = t_dir
  dirs[:, _ST] = injury
  # Ectopic focus: any axis whose lead-II projection is clearly non-zero.
  v_axis = rng.uniform(0.0, 120.0) + (180.0 if rng.uniform() < 0.5 else 0.0)
  dirs[:, _V] = _unit(v_axis, rng.uniform(-0.7, 0.7))
  dirs[:, _V2] = _random_unit(rng)
  vt = -dirs[:, _V] + 0.3 * _random_unit(rng)  # Discordant repolarisation.
  dirs[:, _VT] = vt / np.linalg.norm(vt)
  # Ectopic atrial focus: often low atrial (inverted P in the inferior leads).
  dirs[:, _PA] = _unit(rng.uniform(-100.0, 40.0), rng.uniform(-0.3, 0.3))

  # Beat-to-beat amplitude modulation by respiration (electrical axis swing) and jitter.
  resp = 1.0 + rng.uniform(0.0, 0.08) * np.sin(
      2 * np.pi * rng.uniform(0.15, 0.4) * times + rng.uniform(0, 2 * np.pi))
  mod = resp * (1.0 + rng.normal(0.0, 0.02, nb))

  centers = np.zeros((nb, _NUM_SLOTS))
  sigmas = np.ones((nb, _NUM_SLOTS))
  amps = np.zeros((nb, _NUM_SLOTS))
  qt = qtc * np.sqrt(np.clip(rr, 0.3, 2.0))
  t_peak = -qrs / 2 + qt - 2.0 * sig_t
  j_point = qrs / 2 + 0.01
  slot_c = {
      _P: np.full(nb, -qrs / 2 - pr + 0.05), _Q: np.full(nb, -0.3 * qrs),
      _R: np.zeros(nb), _S: np.full(nb, 0.3 * qrs), _T1: t_peak - 0.015,
      _T2: t_peak + 0.025, _ST: 0.5 * (j_point + t_peak),
  }
  slot_s = {
      _P: sig_p, _Q: qrs / 10, _R: qrs / 8, _S: qrs / 10, _T1: sig_t,
      _T2: 0.55 * sig_t, _ST: 0.45 * (t_peak - j_point),
  }
  slot_a = dict(amp)
  slot_a[_T2] = 0.5 * amp[_T1]
  slot_a[_ST] = st_amp
  if name == "atrial_fibrillation":
    slot_a[_P] = 0.0
  for s in slot_c:
    centers[:, s] = times + slot_c[s]
    sigmas[:, s] = slot_s[s]
    amps[:, s] = np.where(pvc, 0.0, slot_a[s] * mod)
  pac = kind == _PAC
  if np.any(pac):
    centers[:, _PA] = times - qrs / 2 - rng.uniform(0.1, 0.2) + 0.05
    sigmas[:, _PA] = sig_p * rng.uniform(0.8, 1.2)
    amps[:, _PA] = np.where(pac, rng.uniform(0.6, 1.2) * amp[_P] * mod, 0.0)
    amps[:, _P] = np.where(pac, 0.0, amps[:, _P])
  if np.any(pvc):
    sig_v = rng.uniform(0.028, 0.04)
    amp_v = rng.uniform(1.0, 2.2)
    centers[:, _V] = times
    sigmas[:, _V] = sig_v
    amps[:, _V] = np.where(pvc, amp_v * mod, 0.0)
    centers[:, _V2] = times + rng.uniform(0.035, 0.055)
    sigmas[:, _V2] = 0.6 * sig_v
    amps[:, _V2] = np.where(pvc, 0.35 * amp_v * mod, 0.0)
    centers[:, _VT] = times + rng.uniform(0.26, 0.34)
    sigmas[:, _VT] = rng.uniform(0.06, 0.08)
    amps[:, _VT] = np.where(pvc, rng.uniform(0.3, 0.6) * mod, 0.0)
  return centers, sigmas, amps, dirs


def _fibrillatory_waves(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
  """Atrial f-waves, [3, n]: 4-8 Hz, drifting rate and amplitude, strongest in V1."""
  t = np.arange(n, dtype=np.float32) / np.float32(fs)
  f0 = rng.uniform(4.5, 8.0)
  freq = f0 * (1.0 + rng.uniform(0.03, 0.1) * np.sin(
      2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi)))
  phase = 2 * np.pi * np.cumsum(freq) / fs + rng.uniform(0, 2 * np.pi)
  wave = np.sin(phase) + rng.uniform(0.2, 0.5) * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))
  env = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 2 * np.pi))
  f_dir = _unit(rng.uniform(70.0, 130.0), rng.uniform(0.5, 0.9))
  amp = np.float32(rng.uniform(0.02, 0.1))
  return f_dir.astype(np.float32)[:, None] * (amp * env * wave)[None, :]


def _add_noise(rng: np.random.Generator, indep: np.ndarray, fs: float) -> np.ndarray:
  """White (EMG-like) noise, mains hum and baseline wander on the independent leads.

  Noise is added before deriving the augmented limb leads, as on a real recorder, so
  the Einthoven identities still hold exactly.
  """
  c, n = indep.shape
  f32 = np.float32
  t = np.arange(n, dtype=f32) / f32(fs)  # float32 trig is ~10x faster and ample here.
  std = rng.uniform(0.005, 0.06) * rng.uniform(0.6, 1.4, c)
  out = indep + std[:, None].astype(f32) * rng.standard_normal((c, n), dtype=f32)
  if rng.uniform() < 0.6:
    f = 50.0 if rng.uniform() < 0.5 else 60.0
    arg = f32(2 * np.pi * f) * t
    basis = np.stack([np.cos(arg), np.sin(arg)])
    coef = rng.normal(size=(c, 2)) * rng.uniform(0.003, 0.05) / np.sqrt(2.0)
    out += coef.astype(f32) @ basis
  k = 3
  freqs = rng.uniform(0.05, 0.5, (k, 1)).astype(f32)
  src = np.sin(f32(2 * np.pi) * freqs * t[None, :]
               + rng.uniform(0, 2 * np.pi, (k, 1)).astype(f32))
  weights = rng.dirichlet(np.ones(k)).astype(f32)
  gains = rng.uniform(-1.0, 1.0, (c, 1)) * rng.uniform(0.02, 0.5)
  out += gains.astype(f32) * (weights @ src)[None, :]
  return out


def generate_record(rng: np.random.Generator, class_index: int, sampling_rate: float = 500.0,
                    duration_s: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
  """One synthetic 12-lead ECG of the given class, fully determined by ``rng``'s state.

  Returns:
    signal: float32 [12, samples] in mV, rows in STANDARD_LEADS order.
    r_peaks: int64 sorted sample indices of the true R peaks (the peak of the QRS lobe
      in lead II nearest each beat's fiducial time, taken on the noise-free signal).
  """
  if not 0 <= class_index < NUM_CLASSES:
    raise ValueError(f"class_index {class_index} not in [0, {NUM_CLASSES})")
  name = CLASS_NAMES[class_index]
  fs = float(sampling_rate)
  n = int(round(duration_s * fs))
  rr0 = 60.0 / rng.uniform(*_HR_RANGE[name])
  times, rr, kind = _beat_times(rng, name, rr0, duration_s)
  centers, sigmas, amps, dirs = _wave_parameters(rng, name, times, rr, kind)
  scale = rng.lognormal(0.0, 0.2)
  dipole = np.float32(scale) * (dirs.astype(np.float32) @ _render(centers, sigmas, amps, n, fs))
  if name == "atrial_fibrillation":
    dipole += _fibrillatory_waves(rng, n, fs)
  leads = _lead_matrix(rng)
  clean = leads.astype(np.float32) @ dipole

  # Refine each fiducial to the peak of its main QRS lobe in lead II: the R wave of a
  # conducted beat (positive there by construction), the largest deflection of a PVC.
  inside = (times >= 0.0) & (times < n / fs)
  fid = np.round(times[inside] * fs).astype(np.int64)
  half = max(1, int(round(0.02 * fs)))
  win = np.clip(fid[:, None] + np.arange(-half, half + 1), 0, n - 1)
  lead_ii = clean[1][win]
  score = np.where((kind == _PVC)[inside, None], np.abs(lead_ii), lead_ii)
  r_peaks = win[np.arange(fid.size), np.argmax(score, 1)]
  r_peaks = np.unique(r_peaks).astype(np.int64)

  signal = _to_twelve_leads(_add_noise(rng, clean, fs))
  return signal.astype(np.float32), r_peaks


def split_for_index(index: int) -> str:
  """Deterministic 80/10/10 split: exact within every block of ten consecutive indices.

  Depends on the index only (not the seed or the class), so the split of record i is
  stable across seeds and uncorrelated with the round-robin class assignment.
  """
  block, pos = divmod(int(index), 10)
  slot = int(np.random.default_rng([_SPLIT_SALT, block]).permutation(10)[pos])
  return "train" if slot < 8 else ("val" if slot == 8 else "test")


def make_record(index: int, seed: int = 0, sampling_rate: float = 500.0,
                duration_s: float = 10.0) -> EcgRecord:
  """Record ``index`` of the set: a pure function of (seed, index), so any worker can
  make any record. Classes are assigned round-robin (balanced)."""
  rng = np.random.default_rng([int(seed), int(index)])
  class_index = int(index) % NUM_CLASSES
  signal, r_peaks = generate_record(rng, class_index, sampling_rate, duration_s)
  lim = np.iinfo(np.int16)
  digital = np.clip(np.round(signal * GAIN_ADU_PER_MV), lim.min, lim.max).astype(np.int16)
  return EcgRecord(
      record_id=f"syn{int(index):06d}", signal=digital, sampling_rate=float(sampling_rate),
      leads=STANDARD_LEADS, gain=np.full(len(STANDARD_LEADS), GAIN_ADU_PER_MV),
      labels=[class_index], split=split_for_index(index), r_peaks=r_peaks,
      metadata={"class": CLASS_NAMES[class_index]})


def generate_records(num_records: int, seed: int = 0, sampling_rate: float = 500.0,
                     duration_s: float = 10.0) -> Iterator[EcgRecord]:
  """Yields ``num_records`` labelled records, deterministic given ``seed``."""
  for i in range(num_records):
    yield make_record(i, seed, sampling_rate, duration_s)
