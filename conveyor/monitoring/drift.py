"""The drift trigger: the rolling window of incoming data against the champion's baseline.

A feature drifts when two things hold at once:

* a statistical test on the whylogs profiles says the window differs from the baseline: for a
  numeric feature the Kolmogorov-Smirnov p-value (``test: ks``) or the Hellinger distance above
  ``hellinger`` (``test: hellinger``), computed by whylogs from the profiles' KLL sketches; for a
  categorical feature (class mix, camera mix) a chi-square test of homogeneity on the profiles'
  value counts. P-values are compared with ``pvalue`` divided by the number of tests made
  (features x (1 + cameras), Bonferroni), so more features or cameras do not mean more false alarms;
* and the change is large enough to matter: the mean shifts by more than ``min_relative_change``
  of the baseline mean (numeric), or more than that share of probability mass moves between
  values (total variation distance, categorical).

The statistical test alone fires on any tiny shift once thousands of images are profiled; the
practical margin alone fires on noise in small windows. A window with fewer than
``min_samples`` values of a feature reports ``not_enough_data``, never "no drift". With
``per_camera`` each camera's window is tested on its own as well, so one camera whose lighting
changed is caught even when the other cameras dilute the overall mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from conveyor.monitoring import profiles
from conveyor.core.spec import DRIFT_FEATURES, IMAGE_FEATURES, DriftTrigger, parse_duration_s

# Feature statuses
DRIFT = "drift"
NO_DRIFT = "no_drift"
NOT_ENOUGH_DATA = "not_enough_data"
NO_BASELINE = "no_baseline"


def stream_of(feature: str) -> str:
    return "images" if feature in IMAGE_FEATURES else "predictions"


@dataclass
class FeatureDrift:
    feature: str
    stream: str
    kind: str  # numeric | categorical
    status: str
    rows: int
    baseline_rows: int
    test: str | None = None
    statistic: float | None = None
    pvalue: float | None = None
    baseline_mean: float | None = None
    window_mean: float | None = None
    relative_change: float | None = None
    moved_mass: float | None = None  # categorical: total variation distance
    camera: str | None = None
    reason: str = ""

    @property
    def drifted(self) -> bool:
        return self.status == DRIFT

    def short(self) -> str:
        """A few words: ``brightness 0.232 -> 0.33 (+42%, KS p=1e-12)``."""
        p = f"p={_g(self.pvalue)}" if self.pvalue is not None else f"{self.test} {_g(self.statistic)}"
        if self.kind == "categorical":
            return f"{self.feature} mix moved {_pct(self.moved_mass)} ({self.test} {p})"
        sign = "+" if (self.window_mean or 0) >= (self.baseline_mean or 0) else "-"
        return (f"{self.feature} {_g(self.baseline_mean)} -> {_g(self.window_mean)} "
                f"({sign}{_pct(self.relative_change)}, {self.test} {p})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriftReport:
    status: str  # fired | quiet | not_enough_data | no_baseline
    fired: bool
    window: str
    since: str
    until: str
    batches: dict[str, int]
    rows: dict[str, int]
    baseline_version: int | None
    features: list[FeatureDrift] = field(default_factory=list)
    cameras: dict[str, list[FeatureDrift]] = field(default_factory=dict)
    reason: str = ""

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted] + [f for fs in self.cameras.values() for f in fs if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drifted"] = [f.to_dict() for f in self.drifted]
        return d


def _numeric(cfg: DriftTrigger, feature: str, stream: str, win: Any, base: Any, camera: str | None,
             alpha: float) -> FeatureDrift:
    from whylogs.viz.drift.column_drift_algorithms import KS, Hellinger

    n = profiles.column_rows(win, feature) if win is not None else 0
    nb = profiles.column_rows(base, feature) if base is not None else 0
    fd = FeatureDrift(feature, stream, "numeric", NO_DRIFT, n, nb, camera=camera)
    if nb == 0:
        fd.status, fd.reason = NO_BASELINE, f"the baseline has no values of {feature}"
        return fd
    if n < cfg.min_samples:
        fd.status, fd.reason = NOT_ENOUGH_DATA, f"{n} values of {feature} in the window, fewer than min_samples {cfg.min_samples}"
        return fd
    wc, bc = win.get_columns()[feature], base.get_columns()[feature]
    fd.baseline_mean = profiles.column_mean(base, feature)
    fd.window_mean = profiles.column_mean(win, feature)
    if fd.baseline_mean is not None and fd.window_mean is not None:
        fd.relative_change = abs(fd.window_mean - fd.baseline_mean) / max(abs(fd.baseline_mean), 1e-9)
    if cfg.test == "ks":
        score = KS().calculate(wc, bc)
        fd.test = "ks"
        if score is not None:
            fd.statistic, fd.pvalue = float(score.statistic), float(score.pvalue)
        significant = fd.pvalue is not None and fd.pvalue < alpha
        test_txt = f"KS p={_g(fd.pvalue)} ({'<' if significant else '>='} {alpha:.3g})"
    else:
        score = Hellinger().calculate(wc, bc)
        fd.test = "hellinger"
        if score is not None:
            fd.statistic = float(score.statistic)
        significant = fd.statistic is not None and fd.statistic > cfg.hellinger
        test_txt = f"Hellinger {_g(fd.statistic)} ({'>' if significant else '<='} {cfg.hellinger:g})"
    large = fd.relative_change is not None and fd.relative_change > cfg.min_relative_change
    change_txt = (f"mean {_g(fd.baseline_mean)} -> {_g(fd.window_mean)} "
                  f"({_pct(fd.relative_change)}, margin {_pct(cfg.min_relative_change)})")
    fd.status = DRIFT if significant and large else NO_DRIFT
    verdict = "drift" if fd.status == DRIFT else ("no drift: change within the margin" if significant
                                                   else "no drift: not significant")
    fd.reason = f"{feature}: {verdict}; {test_txt}; {change_txt}; {n} values vs {nb} in the baseline"
    return fd


def _categorical(cfg: DriftTrigger, feature: str, stream: str, win: Any, base: Any, camera: str | None,
                 alpha: float) -> FeatureDrift:
    """Chi-square test of homogeneity on the two count tables (the window and the baseline are
    both samples), rather than whylogs' goodness-of-fit test, which takes the baseline as exact."""
    from scipy.stats import chi2_contingency

    n = profiles.column_rows(win, feature) if win is not None else 0
    nb = profiles.column_rows(base, feature) if base is not None else 0
    fd = FeatureDrift(feature, stream, "categorical", NO_DRIFT, n, nb, test="chi-square", camera=camera)
    if nb == 0:
        fd.status, fd.reason = NO_BASELINE, f"the baseline has no values of {feature}"
        return fd
    cw, cb = profiles.column_counts(win, feature) if win is not None else {}, profiles.column_counts(base, feature)
    values = sorted(set(cw) | set(cb))
    need = max(cfg.min_samples, 5 * len(values))  # the usual rule: about 5 expected per cell
    if n < need:
        fd.status = NOT_ENOUGH_DATA
        fd.reason = (f"{n} values of {feature} in the window, fewer than {need} (min_samples {cfg.min_samples}, "
                     f"5 per value for {len(values)} values)")
        return fd
    table = [[cw.get(v, 0) for v in values], [cb.get(v, 0) for v in values]]
    if len(values) > 1:
        res = chi2_contingency(table)
        fd.statistic, fd.pvalue = float(res.statistic), float(res.pvalue)
    else:
        fd.statistic, fd.pvalue = 0.0, 1.0
    pw = {v: cw.get(v, 0) / max(n, 1) for v in values}
    pb = {v: cb.get(v, 0) / max(nb, 1) for v in values}
    fd.moved_mass = 0.5 * sum(abs(pw[v] - pb[v]) for v in values)
    significant = fd.pvalue < alpha
    large = fd.moved_mass > cfg.min_relative_change
    fd.status = DRIFT if significant and large else NO_DRIFT
    top = sorted(values, key=lambda k: -abs(pw[k] - pb[k]))[:3]
    moves = ", ".join(f"{k} {_pct(pb[k])} -> {_pct(pw[k])}" for k in top)
    verdict = "drift" if fd.status == DRIFT else ("no drift: change within the margin" if significant
                                                   else "no drift: not significant")
    fd.reason = (f"{feature}: {verdict}; chi-square p={_g(fd.pvalue)} ({'<' if significant else '>='} {alpha:.3g}); "
                 f"{_pct(fd.moved_mass)} of the mass moved (margin {_pct(cfg.min_relative_change)}): {moves}; "
                 f"{n} values vs {nb} in the baseline")
    return fd


def _feature(cfg: DriftTrigger, feature: str, win: Any, base: Any, alpha: float, camera: str | None = None) -> FeatureDrift:
    fn = _numeric if DRIFT_FEATURES[feature] == "numeric" else _categorical
    return fn(cfg, feature, stream_of(feature), win, base, camera, alpha)


def evaluate_drift(cfg: DriftTrigger, store: profiles.ProfileStore, baselines: dict[str, profiles.Baseline | None],
                   now: datetime, baseline_version: int | None = None,
                   exclude: frozenset[str] | None = None) -> DriftReport:
    """Test every configured feature (overall, then per camera) and say whether the trigger fires.

    ``exclude`` (content hashes of the champion's training images) keeps the images window to
    what arrived after the champion's data: its own training images would dilute any shift.

    Each camera's window is compared with that camera's own baseline, since cameras differ in
    tint, gain and framing by design; a camera absent from the training data is compared with the
    overall baseline and flagged as new."""
    since = now - timedelta(seconds=parse_duration_s(cfg.window))
    streams = sorted({stream_of(f) for f in cfg.features})
    windows = {s: store.window(s, since, now, cameras=cfg.per_camera, exclude=exclude if s == "images" else None)
               for s in streams}
    report = DriftReport(NO_DRIFT, False, cfg.window, since.isoformat(), now.isoformat(),
                         {s: len(w.batches) for s, w in windows.items()}, {s: w.rows for s, w in windows.items()},
                         baseline_version)
    if all(baselines.get(s) is None for s in streams):
        report.status = NO_BASELINE
        report.reason = ("no baseline profile: there is no champion yet, or it was registered before profiles "
                         "were kept; the next registered champion brings one")
        return report

    def base_view(stream: str, camera: str | None = None) -> Any:
        b = baselines.get(stream)
        if b is None:
            return None
        return b.overall if camera is None else b.cameras.get(camera, b.overall)

    cams = sorted({c for s in streams for c in windows[s].cameras}) if cfg.per_camera else []
    # Bonferroni: p-values are compared with pvalue / number of tests, so watching more features
    # or cameras does not raise the rate of false alarms.
    alpha = cfg.pvalue / (len(cfg.features) * (1 + len(cams)))
    for f in cfg.features:
        s = stream_of(f)
        report.features.append(_feature(cfg, f, windows[s].view, base_view(s), alpha))
    if cams:
        for cam in cams:
            feats = []
            for f in cfg.features:
                s = stream_of(f)
                fd = _feature(cfg, f, windows[s].cameras.get(cam), base_view(s, cam), alpha, camera=cam)
                b = baselines.get(s)
                if b is not None and cam not in b.cameras:
                    fd.reason += f"; camera {cam} is new (not in the champion's data): compared with the overall baseline"
                feats.append(fd)
            report.cameras[cam] = feats
    drifted = report.drifted
    if drifted:
        report.status, report.fired = "fired", True
        parts = []
        overall = [d for d in drifted if d.camera is None]
        if overall:
            parts.append("overall " + ", ".join(d.short() for d in overall))
        by_cam: dict[str, list[FeatureDrift]] = {}
        for d in drifted:
            if d.camera is not None:
                by_cam.setdefault(d.camera, []).append(d)
        for cam, ds in by_cam.items():
            b = baselines.get(ds[0].stream)
            new = " (new camera)" if b is not None and cam not in b.cameras else ""
            parts.append(f"camera {cam}{new} " + ", ".join(d.short() for d in ds))
        report.reason = "drift: " + "; ".join(parts)
    elif all(f.status in (NOT_ENOUGH_DATA, NO_BASELINE) for f in report.features):
        report.status = NOT_ENOUGH_DATA
        report.reason = "not enough data to test: " + "; ".join(f.reason for f in report.features)
    else:
        report.status = "quiet"
        tested = [f for f in report.features if f.status == NO_DRIFT]
        untested = [f for f in report.features if f.status != NO_DRIFT]
        report.reason = "no drift: " + "; ".join(f.reason for f in tested)
        if untested:
            report.reason += "; untested: " + "; ".join(f.reason for f in untested)
    return report


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
