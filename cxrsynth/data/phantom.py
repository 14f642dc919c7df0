"""Phantom chest radiographs with labelled reports: the embedded data the demo and tests use.

Each study is drawn procedurally, frontal (PA or AP) and usually lateral, vectorised over batches
of studies. Every one of the 14 labels changes the image in its own way (table below); patients
differ in anatomy (lung, heart, body size, rib spacing), which persists across their studies, and
sites differ in acquisition (contrast, exposure, noise) and label mix, so sites are not identically
distributed. Reports (FINDINGS, IMPRESSION) agree with the labels and carry PHI; the PHI header
fields go to `Record.phi_meta`. Deterministic by seed.

| label | frontal | lateral |
|---|---|---|
| Atelectasis | plate-like basal band, raised hemidiaphragm | oblique band, raised diaphragm |
| Cardiomegaly | heart wider than half the thorax | heart fills the retrosternal space |
| Consolidation | dense lower lobe bounded by the fissure | dense posterior-basal wedge |
| Edema | bilateral perihilar haze | central haze |
| Enlarged Cardiomediastinum | widened upper mediastinum | filled anterior mediastinum |
| Fracture | rib callus with a cortical gap | posterior rib callus |
| Lung Lesion | one sharp round nodule | the same nodule |
| Lung Opacity | several soft patchy blobs | soft blobs |
| No Finding | none of the above | none |
| Pleural Effusion | basal fluid with a lateral meniscus, blunted angle | posterior sulcus fluid |
| Pleural Other | lateral/apical pleural band with calcified plaques | posterior pleural band |
| Pneumonia | mottled ill-defined zone | mottled zone |
| Pneumothorax | pleural line, no lung markings beyond it | dark apical cap with a line |
| Support Devices | tube, central line or pacemaker with leads | tube, pacemaker |
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Optional

import numpy as np

from cxrsynth.data.phantom_report import draw_identity, draw_patient, write_report
from cxrsynth.data.records import LABELS, Record

FINDINGS = tuple(n for n in LABELS if n != "No Finding")
IDX = {n: i for i, n in enumerate(LABELS)}
# Share of studies where a finding is present. Chosen so each label has at least ~5% positives
# overall (models must be able to learn each one) and about a fifth of studies have no finding,
# roughly the MIMIC-CXR-JPG mix (Johnson et al. 2019).
PREVALENCE = {
    "Atelectasis": 0.13,
    "Cardiomegaly": 0.14,
    "Consolidation": 0.08,
    "Edema": 0.10,
    "Enlarged Cardiomediastinum": 0.07,
    "Fracture": 0.07,
    "Lung Lesion": 0.07,
    "Lung Opacity": 0.14,
    "Pleural Effusion": 0.15,
    "Pleural Other": 0.07,
    "Pneumonia": 0.08,
    "Pneumothorax": 0.07,
    "Support Devices": 0.18,
}
UNCERTAIN_RATE = 0.03  # hedged mentions per finding
NEGATED_RATE = 0.35  # explicit "No X." per absent finding
CHRONIC = ("Cardiomegaly", "Pleural Other", "Fracture", "Lung Lesion", "Enlarged Cardiomediastinum")
DEVICE_KINDS = ("et", "line", "pacer")
CHUNK = 256  # studies drawn per vectorised batch; fixed so output does not depend on n
NONE = -9  # "not mentioned" in the label-state array


def site_acquisition(site: int) -> dict[str, float]:
    """Per-site acquisition (gamma, gain, offset, noise, blur) and label-mix skew; fixed per site index."""
    fixed = (
        {"gamma": 1.0, "gain": 1.0, "offset": 0.0, "noise": 0.015, "blur": 0.1},
        {"gamma": 0.75, "gain": 0.85, "offset": 0.08, "noise": 0.035, "blur": 0.2},
        {"gamma": 1.35, "gain": 1.1, "offset": -0.04, "noise": 0.025, "blur": 0.04},
    )
    rng = np.random.default_rng([7919, site])
    acq = (
        dict(fixed[site])
        if site < len(fixed)
        else {
            "gamma": float(rng.uniform(0.7, 1.4)),
            "gain": float(rng.uniform(0.8, 1.15)),
            "offset": float(rng.uniform(-0.05, 0.1)),
            "noise": float(rng.uniform(0.01, 0.045)),
            "blur": float(rng.uniform(0.03, 0.2)),
        }
    )
    skew = np.random.default_rng([104729, site]).uniform(0.6, 1.5, len(FINDINGS))
    acq["skew"] = {n: float(s) for n, s in zip(FINDINGS, skew)}
    return acq


def _studies_per_patient(rng, n: int, sites: int) -> list[int]:
    """Study counts per patient summing to n; a few patients have several studies."""
    counts: list[int] = []
    total = 0
    single = n <= 2 * sites  # tiny cohorts: one study each so every site gets a patient
    while total < n:
        k = 1 if single else int(min(1 + rng.geometric(0.55) - 1, 6))
        k = min(k, n - total)
        counts.append(k)
        total += k
    return counts


def _cohort(n: int, sites: int, seed: int, lateral: bool, site_offset: int = 0) -> dict:
    """Everything random about the studies except pixel noise: who, where, what, how."""
    rng = np.random.default_rng([seed, 1])
    counts = _studies_per_patient(rng, n, sites)
    n_pat = len(counts)
    pat_of = np.repeat(np.arange(n_pat), counts)
    site_of_pat = np.arange(n_pat) % sites
    site = site_of_pat[pat_of]
    acq = [site_acquisition(site_offset + s) for s in range(sites)]

    anatomy = {
        "lung_rx": rng.normal(0.15, 0.012, n_pat),
        "lung_ry": rng.normal(0.30, 0.02, n_pat),
        "lung_sep": rng.normal(0.19, 0.012, n_pat),
        "heart_rx": rng.normal(0.12, 0.01, n_pat),
        "heart_ry": rng.normal(0.12, 0.01, n_pat),
        "body_rx": rng.normal(0.44, 0.025, n_pat),
        "rib_n": rng.uniform(7.0, 9.0, n_pat),
        "rib_phase": rng.uniform(0, 2 * np.pi, n_pat),
        "vessel_idx": rng.integers(0, 16, n_pat),
    }
    p = {k: v[pat_of] for k, v in anatomy.items()}
    p["shift_u"] = rng.normal(0, 0.012, n)  # positioning
    p["shift_v"] = rng.normal(0, 0.012, n)
    p["inspiration"] = rng.normal(0, 0.015, n)

    state = np.full((n, len(LABELS)), NONE, dtype=np.int8)
    chronic = {c: rng.random(n_pat) < PREVALENCE[c] for c in CHRONIC}
    for name in FINDINGS:
        j = IDX[name]
        prev = PREVALENCE[name] * np.array([acq[s]["skew"][name] for s in site])
        present = rng.random(n) < prev
        if name in chronic:
            # Chronic findings follow the patient from study to study.
            present = np.where(rng.random(n) < 0.85, chronic[name][pat_of], present)
        uncertain = ~present & (rng.random(n) < UNCERTAIN_RATE)
        negated = ~present & ~uncertain & (rng.random(n) < NEGATED_RATE)
        state[:, j] = np.where(present, 1, np.where(uncertain, -1, np.where(negated, 0, NONE)))
    # Pneumonia shows as consolidation or opacity more often than not; edema comes with a big heart.
    pneu = state[:, IDX["Pneumonia"]] == 1
    link = pneu & (rng.random(n) < 0.5)
    state[link, IDX["Lung Opacity"]] = 1
    edema = (state[:, IDX["Edema"]] == 1) & (rng.random(n) < 0.4)
    state[edema, IDX["Cardiomegaly"]] = 1
    abnormal = np.isin(state[:, [IDX[f] for f in FINDINGS if f != "Support Devices"]], (1, -1)).any(axis=1)
    state[:, IDX["No Finding"]] = np.where(abnormal, NONE, 1)

    p["state"] = state
    p["sev"] = rng.integers(0, 3, (n, len(LABELS)))
    p["side"] = rng.integers(0, 2, (n, len(LABELS)))
    p["device"] = rng.integers(0, len(DEVICE_KINDS), n)
    p["blob_u"] = rng.uniform(-0.6, 0.6, (n, 4))  # lung-relative positions of opacities, nodule, pneumonia
    p["blob_v"] = rng.uniform(-0.5, 0.5, (n, 4))
    p["fx_v"] = rng.uniform(0.28, 0.55, n)
    sd = state[:, IDX["Support Devices"]] == 1
    p["ap"] = rng.random(n) < np.where(sd, 0.75, 0.25)  # portable AP films are mostly bedside/ICU
    has_lat = rng.random(n) < np.where(p["ap"], 0.35, 0.92)
    p["has_lateral"] = has_lat & lateral
    for k in ("gamma", "gain", "offset", "noise", "blur"):
        p[k] = np.array([acq[s][k] for s in site])

    start = date(2015, 1, 1)
    identities, priors = [], []
    first_day = rng.integers(0, 365 * 6, n_pat)
    patients = [draw_patient(rng) for _ in range(n_pat)]
    day = first_day[pat_of].copy()
    for i in range(1, n):
        if pat_of[i] == pat_of[i - 1]:
            day[i] = day[i - 1] + int(rng.integers(1, 400))
    for i in range(n):
        d = start + timedelta(days=int(day[i]))
        identities.append(draw_identity(rng, patients[pat_of[i]], d))
        priors.append(start + timedelta(days=int(day[i - 1])) if i and pat_of[i] == pat_of[i - 1] else None)
    p.update(pat_of=pat_of, site=site, identities=identities, priors=priors, report_rng=rng)
    return p


def _col(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _blend(img, mask, value, strength):
    return img + strength * mask * (value - img)


class _Subset:
    """Per-study arrays of a batch, indexed lazily to the studies a painter draws on."""

    def __init__(self, full: dict, k: np.ndarray):
        self._full, self._k, self._cache = full, k, {}

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._cache:
            value = self._full[name]
            self._cache[name] = value[self._k] if isinstance(value, np.ndarray) else value
        return self._cache[name]


def _lung(q, sgn):
    """The chosen lung (sgn +1: patient left, image right): its radius map, mask and centre."""
    r = np.where(sgn > 0, q.r_pos, q.r_neg)
    inside = np.where(sgn > 0, q.in_pos, q.in_neg)
    return r, inside, 0.5 + sgn * q.lung_sep


# Frontal painters: (image subset, subset arrays, strength, side sign) -> image subset.
def _f_pneumothorax(img, q, s, sgn):
    # Beyond a pleural line the lung has fallen away: dark air and no lung markings.
    # The collapsed lung inside the line is denser than normal lung.
    r, inside, _ = _lung(q, sgn)
    edge = np.where(s > 0.6, 0.5, 0.72)
    img = np.where(inside & (r <= edge), img + 0.1 * s, img)
    img = np.where(inside & (r > edge) & (q.v < 0.65), 0.0, img)
    return np.where(inside & (np.abs(r - edge) < 0.1) & (q.v < 0.65), 0.55, img)


def _f_effusion(img, q, s, sgn):
    # Dependent fluid whose meniscus climbs laterally, filling the costophrenic angle.
    r, _, cx = _lung(q, sgn)
    lat = np.clip((q.u - cx) * sgn / q.lung_rx, 0, 1)
    level = LUNG_CY + 0.85 * q.lung_ry - (0.07 + 0.08 * s) - 0.12 * lat**2
    return _blend(img, (r < 1.08) & (q.v > level) & q.body, 0.6, s)


def _f_consolidation(img, q, s, sgn):
    # The lower lobe, bounded above by the oblique fissure, dense and homogeneous.
    _, inside, cx = _lung(q, sgn)
    return _blend(img, inside & (q.v > LUNG_CY + 0.02 + 0.35 * (q.u - cx) * sgn), 0.62, s)


def _f_edema(img, q, s, sgn):
    # Perihilar (bat-wing) haze on both sides.
    haze = sum(np.exp(-(((q.u - (0.5 + k * 0.13)) / 0.11) ** 2 + ((q.v - 0.47) / 0.14) ** 2)) for k in (-1, 1))
    return img + s * 0.38 * haze * q.lungs


def _f_opacity(img, q, s, sgn):
    # A few soft patchy blobs, in both lungs.
    for k in range(3):
        bu = 0.5 + (1 if k % 2 else -1) * q.lung_sep + q.blob_u[:, k : k + 1, None] * 0.12
        bv = 0.47 + q.blob_v[:, k : k + 1, None] * 0.4
        img = img + s * 0.3 * np.exp(-(((q.u - bu) ** 2 + (q.v - bv) ** 2) / 0.004)) * q.lungs
    return img


def _f_lesion(img, q, s, sgn):
    # One round, sharply marginated nodule.
    nu = 0.5 + sgn * q.lung_sep + q.blob_u[:, 3:4, None] * 0.1
    nv = 0.42 + q.blob_v[:, 3:4, None] * 0.3
    rad = 0.04 + 0.012 * q.sev_lesion
    return _blend(img, ((q.u - nu) ** 2 + (q.v - nv) ** 2) < rad**2, 0.75, s)


def _mottle(q):
    return 0.55 + 0.45 * np.cos(55 * q.u + q.phase) * np.cos(47 * q.v + 2 * q.phase)


def _f_pneumonia(img, q, s, sgn):
    # An ill-defined, mottled zone in the mid-lower lung.
    pu = 0.5 + sgn * q.lung_sep
    pv = 0.55 + q.blob_v[:, 2:3, None] * 0.1
    zone = np.exp(-(((q.u - pu) / 0.1) ** 2 + ((q.v - pv) / 0.12) ** 2))
    return img + s * 0.42 * zone * _mottle(q) * q.lungs


def _f_atelectasis(img, q, s, sgn):
    # A plate-like band above the hemidiaphragm, which is raised on that side (volume loss).
    _, inside, cx = _lung(q, sgn)
    band = inside & (np.abs(q.v - (LUNG_CY + 0.12 * q.lung_ry + 0.04 * (q.u - cx) * sgn)) < q.thin * 2)
    return _blend(img, band, 0.6, s)


def _f_pleural_other(img, q, s, sgn):
    # Thickened pleura along the lateral and apical wall, with calcified plaques.
    r, _, _ = _lung(q, sgn)
    rim = (r > 0.72) & (r < 1.12) & (q.v < LUNG_CY + 0.1) & q.body
    img = _blend(img, rim, 0.55, s)
    return _blend(img, rim & (np.cos(70 * q.v) > 0.75), 0.85, s)


def _f_fracture(img, q, s, sgn):
    # A bright callus with a cortical gap on a lateral rib.
    fu = 0.5 + sgn * (q.lung_sep + 0.8 * q.lung_rx)
    callus = ((q.u - fu) / 0.05) ** 2 + ((q.v - q.fx_v) / 0.035) ** 2 < 1
    img = _blend(img, callus, 0.95, s)
    return _blend(img, (np.abs(q.u - fu) < q.thin) & (np.abs(q.v - q.fx_v) < 0.05), 0.05, s)


def _f_devices(img, q, s, sgn):
    # Endotracheal tube, central line, or pacemaker with its lead; all radio-opaque.
    u, v = q.u, q.v
    w = q.thin * 1.2
    ett = (np.abs(u - 0.535) < w) & (v < 0.3)
    cvl = (np.abs(u - (0.24 + 0.5 * np.sqrt(np.clip(v - 0.1, 0, 1)))) < w) & (v > 0.1) & (v < 0.4)
    box = (np.abs(u - 0.76) < 0.06) & (np.abs(v - 0.17) < 0.04)
    lead = (np.abs(u - (0.76 - 0.9 * (v - 0.17))) < w) & (v > 0.17) & (v < 0.6)
    device = np.where(q.device == 0, ett, np.where(q.device == 1, cvl, box | lead))
    return _blend(img, device, 0.97, np.minimum(s * 1.3, 1.0))


# Lateral painters (left lateral: anterior to the image left, spine to the right).
def _l_pneumothorax(img, q, s, sgn):
    top = 0.45 - q.ry * (1 - np.where(s > 0.6, 0.3, 0.2))
    img = np.where(q.lungs & (q.v < top), 0.03, img)
    return np.where(q.lungs & (np.abs(q.v - top) < q.thin), 0.55, img)


def _l_effusion(img, q, s, sgn):
    level = q.dome - 0.08 - 0.08 * s - 0.15 * np.clip((q.u - 0.55) / 0.25, 0, 1) ** 2
    return _blend(img, (q.r < 1.08) & (q.v > level) & (q.u > 0.45) & q.body, 0.68, s)


def _l_consolidation(img, q, s, sgn):
    return _blend(img, q.lungs & (q.v > 0.85 - 0.7 * q.u) & (q.u > 0.45), 0.64, s)


def _l_edema(img, q, s, sgn):
    return img + s * 0.38 * np.exp(-(((q.u - 0.5) / 0.14) ** 2 + ((q.v - 0.47) / 0.14) ** 2)) * q.lungs


def _l_opacity(img, q, s, sgn):
    for k in range(3):
        bu = 0.5 + q.blob_u[:, k : k + 1, None] * 0.22
        bv = 0.47 + q.blob_v[:, k : k + 1, None] * 0.4
        img = img + s * 0.3 * np.exp(-(((q.u - bu) ** 2 + (q.v - bv) ** 2) / 0.004)) * q.lungs
    return img


def _l_lesion(img, q, s, sgn):
    nu = 0.5 + q.blob_u[:, 3:4, None] * 0.2
    nv = 0.36 + q.blob_v[:, 3:4, None] * 0.2
    rad = 0.04 + 0.012 * q.sev_lesion
    return _blend(img, ((q.u - nu) ** 2 + (q.v - nv) ** 2) < rad**2, 0.75, s)


def _l_pneumonia(img, q, s, sgn):
    zone = np.exp(-(((q.u - 0.55) / 0.12) ** 2 + ((q.v - 0.58) / 0.12) ** 2))
    return img + s * 0.42 * zone * _mottle(q) * q.lungs


def _l_atelectasis(img, q, s, sgn):
    return _blend(img, q.lungs & (np.abs(q.v - (0.45 - 0.25 * (q.u - 0.5))) < q.thin * 2), 0.6, s)


def _l_pleural_other(img, q, s, sgn):
    return _blend(img, (q.r > 0.75) & (q.r < 1.1) & (q.u > 0.55) & (q.v < 0.6) & q.body, 0.58, s)


def _l_fracture(img, q, s, sgn):
    return _blend(img, ((q.u - 0.74) / 0.055) ** 2 + ((q.v - q.fx_v) / 0.04) ** 2 < 1, 0.95, s)


def _l_devices(img, q, s, sgn):
    tube = (np.abs(q.u - (0.42 + 0.1 * q.v)) < q.thin * 1.2) & (q.v < 0.32)
    box = (np.abs(q.u - 0.2) < 0.04) & (np.abs(q.v - 0.15) < 0.03)
    return _blend(img, np.where(q.device == 2, box, tube), 0.97, np.minimum(s * 1.3, 1.0))


# Painted in this order (later ones on top); Cardiomegaly and Enlarged Cardiomediastinum change
# the anatomy itself and are drawn with it.
PAINTERS = {
    "frontal": {
        "Pneumothorax": _f_pneumothorax,
        "Pleural Effusion": _f_effusion,
        "Consolidation": _f_consolidation,
        "Edema": _f_edema,
        "Lung Opacity": _f_opacity,
        "Lung Lesion": _f_lesion,
        "Pneumonia": _f_pneumonia,
        "Atelectasis": _f_atelectasis,
        "Pleural Other": _f_pleural_other,
    },
    "lateral": {
        "Pneumothorax": _l_pneumothorax,
        "Pleural Effusion": _l_effusion,
        "Consolidation": _l_consolidation,
        "Edema": _l_edema,
        "Lung Opacity": _l_opacity,
        "Lung Lesion": _l_lesion,
        "Pneumonia": _l_pneumonia,
        "Atelectasis": _l_atelectasis,
        "Pleural Other": _l_pleural_other,
    },
}
ON_TOP = {
    "frontal": {"Fracture": _f_fracture, "Support Devices": _f_devices},
    "lateral": {"Fracture": _l_fracture, "Support Devices": _l_devices},
}
LUNG_CY = 0.47


def _paint(img: np.ndarray, full: dict, painters: dict) -> np.ndarray:
    """Apply each label's painter to the studies that have the label (positive or uncertain)."""
    for name, painter in painters.items():
        s = full["strength"][:, IDX[name]]
        k = np.flatnonzero(s > 0)
        if k.size:
            q = _Subset(full, k)
            sgn = full["sign"][k, IDX[name]][:, None, None]
            img[k] = painter(img[k], q, s[k][:, None, None], sgn)
    return img


def _batch(p: dict, sl: slice, u0: np.ndarray, v0: np.ndarray, rng) -> dict:
    st = p["state"][sl]
    sev = p["sev"][sl]
    full = {
        k: _col(p[k][sl])
        for k in (
            "lung_rx",
            "lung_ry",
            "lung_sep",
            "heart_rx",
            "heart_ry",
            "body_rx",
            "rib_n",
            "rib_phase",
            "inspiration",
            "fx_v",
        )
    }
    # Drawing strength: positive 0.75-1 by severity, uncertain 0.45 (a faint sign), absent 0.
    full["strength"] = np.where(st == 1, 0.75 + 0.125 * sev, np.where(st == -1, 0.45, 0.0)).astype(np.float32)
    full["sign"] = np.where(p["side"][sl] == 1, 1.0, -1.0).astype(np.float32)
    full["sev_lesion"] = _col(sev[:, IDX["Lung Lesion"]])
    full["blob_u"] = p["blob_u"][sl].astype(np.float32)
    full["blob_v"] = p["blob_v"][sl].astype(np.float32)
    full["device"] = p["device"][sl][:, None, None]
    full["phase"] = _col(rng.uniform(0, 2 * np.pi, sl.stop - sl.start))
    # Half-width of thin structures (tubes, lines, bands): at least about a pixel so they show at any size.
    full["thin"] = max(0.008, 0.6 / u0.shape[-1])
    full["u"] = u0 - _col(p["shift_u"][sl])
    full["v"] = v0 - _col(p["shift_v"][sl])
    return full


def _frontal(p: dict, sl: slice, u0, v0, rng, markings) -> np.ndarray:
    f = _batch(p, sl, u0, v0, rng)
    u, v = f["u"], f["v"]
    s = lambda name: f["strength"][:, IDX[name], None, None]  # noqa: E731
    img = np.full(u.shape, 0.04, np.float32)
    f["body"] = ((u - 0.5) / f["body_rx"]) ** 2 + ((v - 0.6) / 0.62) ** 2 < 1
    img[f["body"]] = 0.42
    at = s("Atelectasis") * (f["sign"][:, IDX["Atelectasis"], None, None])
    lungs = np.zeros(u.shape, bool)
    for sgn, key in ((-1.0, "neg"), (1.0, "pos")):
        cx = 0.5 + sgn * f["lung_sep"]
        r = ((u - cx) / f["lung_rx"]) ** 2 + ((v - LUNG_CY) / f["lung_ry"]) ** 2
        # Dome-shaped hemidiaphragm, the right one higher; atelectasis raises its side (volume loss).
        bottom = (
            LUNG_CY
            + 0.85 * f["lung_ry"]
            + f["inspiration"]
            - (0.015 if sgn < 0 else 0.0)
            - 0.04 * np.clip(at * sgn, 0, 1)
        )
        inside = (r < 1) & (v < bottom - 0.07 * np.clip(1 - ((u - cx) / f["lung_rx"]) ** 2, 0, 1))
        f["r_" + key], f["in_" + key] = r, inside
        lungs |= inside
    f["lungs"] = lungs
    img[lungs] = 0.12
    # Lung markings: vessels radiating from the hila (a per-patient pattern from a precomputed table).
    img += 0.13 * markings[p["vessel_idx"][sl]] * lungs
    img = _paint(img, f, PAINTERS["frontal"])
    # Heart: cardiomegaly widens it past half the thoracic width; an AP projection magnifies it.
    mag = np.where(_col(p["ap"][sl]) > 0, 1.08, 1.0).astype(np.float32)
    c = s("Cardiomegaly")
    heart = ((u - 0.53) / (f["heart_rx"] * mag * (1 + 0.55 * c))) ** 2 + (
        (v - 0.63) / (f["heart_ry"] * (1 + 0.2 * c))
    ) ** 2 < 1
    np.maximum(img, 0.66 * heart, out=img)
    media = (np.abs(u - 0.5) < 0.045 + 0.075 * s("Enlarged Cardiomediastinum")) & (v > 0.08) & (v < 0.6)
    np.maximum(img, 0.62 * media, out=img)
    img[(np.abs(u - 0.5) < 0.013) & (v > 0.02) & (v < 0.36)] = 0.25  # trachea
    ribs = (
        (np.sin(2 * np.pi * (v * f["rib_n"] + 1.5 * (u - 0.5) ** 2) + f["rib_phase"]) > 0.75) & f["body"] & (v < 0.8)
    )
    img += 0.07 * ribs
    return _paint(img, f, ON_TOP["frontal"])


def _lateral(p: dict, sl: slice, u0, v0, rng, markings) -> np.ndarray:
    f = _batch(p, sl, u0, v0, rng)
    u, v = f["u"], f["v"]
    s = lambda name: f["strength"][:, IDX[name], None, None]  # noqa: E731
    img = np.full(u.shape, 0.04, np.float32)
    f["body"] = ((u - 0.5) / 0.44) ** 2 + ((v - 0.58) / 0.62) ** 2 < 1
    img[f["body"]] = 0.45
    f["ry"] = ry = f["lung_ry"] * 1.1
    f["r"] = ((u - 0.5) / 0.3) ** 2 + ((v - 0.45) / ry) ** 2
    f["dome"] = (
        0.45
        + 0.85 * ry
        + f["inspiration"]
        - 0.05 * s("Atelectasis")
        - 0.06 * np.clip(1 - ((u - 0.5) / 0.3) ** 2, 0, 1)
    )
    f["lungs"] = (f["r"] < 1) & (v < f["dome"])
    img[f["lungs"]] = 0.16
    img += 0.08 * markings[p["vessel_idx"][sl]] * f["lungs"]
    img = _paint(img, f, PAINTERS["lateral"])
    c = s("Cardiomegaly")
    heart = ((u - (0.36 + 0.04 * c)) / (f["heart_rx"] * 1.3 * (1 + 0.5 * c))) ** 2 + (
        (v - 0.63) / (f["heart_ry"] * 1.2 * (1 + 0.2 * c))
    ) ** 2 < 1
    np.maximum(img, 0.64 * heart, out=img)
    e = s("Enlarged Cardiomediastinum")
    retro = (u > 0.13) & (u < 0.18 + 0.17 * e) & (v > 0.22) & (v < 0.5) & (e > 0)  # retrosternal space filled
    np.maximum(img, 0.6 * retro, out=img)
    img[(u > 0.8) & (u < 0.9) & f["body"] & (np.sin(2 * np.pi * v * 12) > -0.7)] = 0.7  # spine
    img[(u > 0.1) & (u < 0.125) & (v > 0.2) & (v < 0.6)] = 0.6  # sternum
    return _paint(img, f, ON_TOP["lateral"])


def _marking_table(image_size: int, levels: int = 16) -> np.ndarray:
    """Lung-marking patterns (vessels radiating from both hila) for `levels` rotations."""
    grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    v, u = np.meshgrid(grid, grid, indexing="ij")
    out = np.zeros((levels, image_size, image_size), np.float32)
    for i in range(levels):
        phase = 2 * np.pi * i / levels
        for sgn in (-1.0, 1.0):
            dx, dy = u - (0.5 + sgn * 0.08), v - 0.45
            ang = np.arctan2(dy, dx * sgn)
            out[i] += ((0.5 + 0.5 * np.cos(16 * ang + phase)) ** 6) * np.exp(-np.sqrt(dx**2 + dy**2) / 0.18)
    return out


def _acquire(img: np.ndarray, p: dict, sl: slice, rng) -> np.ndarray:
    """Site acquisition: detector blur, response (gamma, gain, offset) and quantum noise, to uint8."""
    w = _col(p["blur"][sl])
    for axis in (1, 2):  # separable [w, 1-2w, w] kernel: the detector's unsharpness
        img = (1 - 2 * w) * img + w * (np.roll(img, 1, axis) + np.roll(img, -1, axis))
    x = np.clip(img, 0, 1) ** _col(p["gamma"][sl])
    x = x * _col(p["gain"][sl]) + _col(p["offset"][sl])
    # Unit-variance uniform noise: after quantisation it looks like Gaussian quantum noise and is
    # several times cheaper to draw.
    x += (rng.random(img.shape, dtype=np.float32) - 0.5) * (np.sqrt(12.0, dtype=np.float32) * _col(p["noise"][sl]))
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def draw_images(p: dict, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All frontal and lateral images (n, S, S) uint8, drawn CHUNK studies at a time."""
    n = len(p["pat_of"])
    grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    v, u = np.meshgrid(grid, grid, indexing="ij")
    u, v = u[None], v[None]
    markings = _marking_table(image_size)
    frontal = np.empty((n, image_size, image_size), np.uint8)
    lateral = np.empty((n, image_size, image_size), np.uint8)
    for c, start in enumerate(range(0, n, CHUNK)):
        sl = slice(start, min(n, start + CHUNK))
        rng = np.random.default_rng([seed, 2, c])
        frontal[sl] = _acquire(_frontal(p, sl, u, v, rng, markings), p, sl, rng)
        lateral[sl] = _acquire(_lateral(p, sl, u, v, rng, markings), p, sl, rng)
    return frontal, lateral


def labels_of(state_row: np.ndarray) -> dict[str, Optional[int]]:
    return {name: (None if int(state_row[j]) == NONE else int(state_row[j])) for j, name in enumerate(LABELS)}


def make_phantom(
    n: int,
    sites: int = 3,
    seed: int = 0,
    image_size: int = 64,
    lateral: bool = True,
    site_offset: int = 0,
    deidentified: bool = False,
) -> list[Record]:
    """`n` phantom studies over `sites` hospitals: images, reports with PHI, labels, PHI headers.

    `site_offset`: the sites are site<offset>..site<offset + sites - 1>, with those sites' own
    acquisition styles and label mixes; a public cohort for pretraining takes an offset past the
    hospitals', so it differs from them as public data differs from a hospital's.
    `deidentified`: a published collection's form: PHI in the reports as typed tags ([NAME],
    [DATE], ...), the sites' redact mode, and no PHI headers. Images and labels are the same.
    """
    if n < 1 or sites < 1 or image_size < 16:
        raise ValueError(
            f"make_phantom needs n >= 1, sites >= 1 and image_size >= 16 (got {n}, {sites}, {image_size})"
        )
    p = _cohort(n, sites, seed, lateral, site_offset)
    frontal, lat = draw_images(p, image_size, seed)
    rng = p["report_rng"]
    out = []
    for i in range(n):
        labels = labels_of(p["state"][i])
        sides = {name: int(p["side"][i, j]) for j, name in enumerate(LABELS)}
        sev = {name: int(p["sev"][i, j]) for j, name in enumerate(LABELS)}
        who = p["identities"][i]
        findings, impression = write_report(
            rng, labels, sides, sev, DEVICE_KINDS[p["device"][i]], who, p["priors"][i], deidentified
        )
        out.append(
            Record(
                record_id=f"r{i:06d}",
                patient_id=f"p{int(p['pat_of'][i]):06d}",
                study_id=f"s{i:06d}",
                site=f"site{site_offset + int(p['site'][i])}",
                view="AP" if p["ap"][i] else "PA",
                findings=findings,
                impression=impression,
                labels=labels,
                image=frontal[i],
                lateral=lat[i] if p["has_lateral"][i] else None,
                phi_meta={} if deidentified else who.header(),
            )
        )
    return out


__all__ = ["make_phantom", "site_acquisition", "LABELS"]
