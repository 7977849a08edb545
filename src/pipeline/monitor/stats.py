"""The statistics of the drift report, on plain arrays (scipy and scikit-learn do the work).

Every check returns a `Check`: which test, its statistic, the rule it is judged by, the p-value when
the rule is a significance test, n on each side, the verdict and a short detail a person reads.

Small samples (both sides at most `large_n`) are judged by significance tests at `alpha`:
chi-squared on the contingency table of categories, two-sample Kolmogorov-Smirnov on numbers, a
chi-squared (or Fisher's exact when an expected count is under 5) test on a share. Large samples are
judged by effect sizes instead (with thousands of items every negligible difference is significant):
the Jensen-Shannon distance (base 2) of the category distributions, the KS distance, the absolute
change of a share. The same split Evidently uses for its column drift defaults.

The embeddings get a domain classifier (logistic regression on standardised PCA features, its ROC
AUC cross-validated with folds grouped by photo, so a photo on both sides lies in one fold) and a
kernel two-sample test (MMD with a Gaussian kernel at the median distance, permutation p-value).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class Check:
    section: str
    check: str
    test: str
    statistic: float | None
    rule: str  # e.g. "p < 0.05", "JS > 0.1", "AUC > 0.55 and p < 0.05"
    threshold: float | None
    p_value: float | None
    n_ref: int
    n_cur: int
    drift: bool
    detail: str = ""
    skipped: str = ""  # why the check could not run (then drift is False)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def skipped(section: str, check: str, why: str, n_ref: int = 0, n_cur: int = 0) -> Check:
    return Check(section, check, "-", None, "-", None, None, n_ref, n_cur, False, skipped=why)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _shares(counts: Counter, n: int) -> dict[str, float]:
    return {k: v / n for k, v in counts.items()} if n else {}


def category_detail(ref: Counter, cur: Counter, top: int = 3) -> str:
    """The categories whose share moved most, e.g. 'dent 12.5% -> 0.0% (absent now); crack new 4.0%'."""
    n_r, n_c = sum(ref.values()), sum(cur.values())
    pr, pc = _shares(ref, n_r), _shares(cur, n_c)
    keys = sorted(set(pr) | set(pc), key=lambda k: (-abs(pc.get(k, 0) - pr.get(k, 0)), str(k)))
    parts = []
    for k in keys[:top]:
        a, b = pr.get(k, 0.0), pc.get(k, 0.0)
        if a == b:
            continue
        note = " (absent now)" if b == 0 else " (new)" if a == 0 else ""
        parts.append(f"{k} {_pct(a)} -> {_pct(b)}{note}")
    return "; ".join(parts) or "same shares"


def categorical(section: str, check: str, ref: Sequence[Any], cur: Sequence[Any], alpha: float, large_n: int,
                js_threshold: float) -> Check:
    """Chi-squared on the 2 x K table (small samples) or the Jensen-Shannon distance (large ones)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    cr, cc = Counter(map(str, ref)), Counter(map(str, cur))
    n_r, n_c = sum(cr.values()), sum(cc.values())
    if not n_r or not n_c:
        return skipped(section, check, f"no items on the {'reference' if not n_r else 'current'} side", n_r, n_c)
    keys = sorted(set(cr) | set(cc))
    table = np.array([[cr.get(k, 0) for k in keys], [cc.get(k, 0) for k in keys]], dtype=float)
    detail = category_detail(cr, cc)
    if max(n_r, n_c) > large_n:
        js = float(jensenshannon(table[0] / n_r, table[1] / n_c, base=2)) if len(keys) > 1 else 0.0
        return Check(section, check, "Jensen-Shannon distance", js, f"JS > {js_threshold:g}", js_threshold, None,
                     n_r, n_c, js > js_threshold, detail)
    if len(keys) < 2:
        return Check(section, check, "chi-squared", 0.0, f"p < {alpha:g}", alpha, 1.0, n_r, n_c, False,
                     f"one category on both sides ({keys[0]})")
    stat, p, _, _ = chi2_contingency(table, correction=False)
    return Check(section, check, "chi-squared", float(stat), f"p < {alpha:g}", alpha, float(p), n_r, n_c,
                 bool(p < alpha), detail)


def numeric(section: str, check: str, ref: Sequence[float], cur: Sequence[float], alpha: float, large_n: int,
            ks_threshold: float, unit: str = "") -> Check:
    """Two-sample Kolmogorov-Smirnov: its p-value (small samples) or its distance D (large ones)."""
    from scipy.stats import ks_2samp

    a = np.asarray([v for v in ref if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in cur if v is not None and np.isfinite(v)], dtype=float)
    if not len(a) or not len(b):
        return skipped(section, check, f"no values on the {'reference' if not len(a) else 'current'} side",
                       len(a), len(b))
    res = ks_2samp(a, b)
    d, p = float(res.statistic), float(res.pvalue)
    detail = f"median {np.median(a):.4g}{unit} -> {np.median(b):.4g}{unit}"
    if max(len(a), len(b)) > large_n:
        return Check(section, check, "Kolmogorov-Smirnov distance", d, f"D > {ks_threshold:g}", ks_threshold, p,
                     len(a), len(b), d > ks_threshold, detail)
    return Check(section, check, "Kolmogorov-Smirnov", d, f"p < {alpha:g}", alpha, p, len(a), len(b),
                 bool(p < alpha), detail)


def proportion(section: str, check: str, k_ref: int, n_ref: int, k_cur: int, n_cur: int, alpha: float,
               large_n: int, rate_threshold: float) -> Check:
    """A share on both sides: chi-squared 2 x 2 (Fisher's exact test when an expected count is < 5) or the
    absolute change (large samples)."""
    from scipy.stats import chi2_contingency, fisher_exact

    if not n_ref or not n_cur:
        return skipped(section, check, f"no items on the {'reference' if not n_ref else 'current'} side", n_ref, n_cur)
    a, b = k_ref / n_ref, k_cur / n_cur
    detail = f"{_pct(a)} ({k_ref}/{n_ref}) -> {_pct(b)} ({k_cur}/{n_cur})"
    if max(n_ref, n_cur) > large_n:
        diff = abs(b - a)
        return Check(section, check, "absolute change", diff, f"|change| > {rate_threshold:g}", rate_threshold,
                     None, n_ref, n_cur, diff > rate_threshold, detail)
    table = np.array([[k_ref, n_ref - k_ref], [k_cur, n_cur - k_cur]], dtype=float)
    if (table.sum(axis=0) == 0).any():  # nobody, or everybody, on both sides
        return Check(section, check, "chi-squared", 0.0, f"p < {alpha:g}", alpha, 1.0, n_ref, n_cur, False, detail)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    if (expected < 5).any():
        stat, p = fisher_exact(table.astype(int))
        return Check(section, check, "Fisher's exact", float(abs(b - a)), f"p < {alpha:g}", alpha, float(p),
                     n_ref, n_cur, bool(p < alpha), detail)
    stat, p, _, _ = chi2_contingency(table, correction=False)
    return Check(section, check, "chi-squared", float(stat), f"p < {alpha:g}", alpha, float(p), n_ref, n_cur,
                 bool(p < alpha), detail)


def new_categories(section: str, check: str, ref: Sequence[Any], cur: Sequence[Any]) -> Check:
    """Categories on the current side that the reference never had (e.g. a new quarantine reason)."""
    cr, cc = Counter(map(str, ref)), Counter(map(str, cur))
    new = sorted(k for k in cc if k not in cr)
    detail = ", ".join(f"{k} ({cc[k]})" for k in new) if new else "none"
    return Check(section, check, "categories absent from the reference", float(len(new)), "any new", 0.0, None,
                 sum(cr.values()), sum(cc.values()), bool(new), f"new: {detail}")


def category_set(section: str, check: str, ref: Sequence[Any], cur: Sequence[Any]) -> Check:
    """Categories gone from the current side or new in it (e.g. a class nobody photographed any more)."""
    cr, cc = Counter(map(str, ref)), Counter(map(str, cur))
    gone, new = sorted(k for k in cr if k not in cc), sorted(k for k in cc if k not in cr)
    parts = ([f"gone: {', '.join(f'{k} ({cr[k]} before)' for k in gone)}"] if gone else []) + \
            ([f"new: {', '.join(f'{k} ({cc[k]})' for k in new)}"] if new else [])
    return Check(section, check, "categories gone or new", float(len(gone) + len(new)), "any gone or new", 0.0,
                 None, sum(cr.values()), sum(cc.values()), bool(gone or new), "; ".join(parts) or "same categories")


def auc_p_value(auc: float, n0: int, n1: int) -> float:
    """One-sided p-value of AUC > 0.5 (the Mann-Whitney U normal approximation, no ties correction)."""
    from scipy.stats import norm

    sd = math.sqrt((n0 + n1 + 1) / (12.0 * n0 * n1))
    return float(norm.sf((auc - 0.5) / sd))


def domain_classifier_auc(x_ref: np.ndarray, x_cur: np.ndarray, groups_ref: Sequence[str], groups_cur: Sequence[str],
                          folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a classifier telling current (1) from reference (0) rows; folds are grouped
    (a photo present on both sides lies in one fold). About 0.5 when the sets come from one distribution."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([x_ref, x_cur]).astype(np.float64)
    y = np.r_[np.zeros(len(x_ref), dtype=int), np.ones(len(x_cur), dtype=int)]
    groups = np.asarray([*groups_ref, *groups_cur])
    k = int(min(folds, len(x_ref), len(x_cur), len(set(groups))))
    if k < 2:
        raise ValueError("the domain classifier needs at least 2 photos on each side")
    n_train = len(x) - math.ceil(len(x) / k)
    dims = max(1, min(32, x.shape[1], n_train - 1))
    model = make_pipeline(StandardScaler(), PCA(n_components=dims, random_state=seed),
                          LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=cv, groups=groups, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def mmd_permutation_test(x_ref: np.ndarray, x_cur: np.ndarray, permutations: int = 200,
                         seed: int = 0) -> tuple[float, float, float]:
    """(MMD^2, p-value, kernel bandwidth): the biased MMD^2 of a Gaussian kernel whose bandwidth is the median
    pairwise distance of the pooled set, against the same statistic over random relabellings."""
    from scipy.spatial.distance import pdist, squareform

    x = np.vstack([x_ref, x_cur]).astype(np.float64)
    d = pdist(x, "sqeuclidean")
    positive = d[d > 0]
    sigma2 = float(np.median(positive)) if len(positive) else 1.0
    k = np.exp(-squareform(d) / sigma2)
    n, m = len(x_ref), len(x_cur)
    rng = np.random.default_rng(seed)
    signs = np.empty((n + m, permutations + 1))
    base = np.r_[np.full(n, 1.0 / n), np.full(m, -1.0 / m)]
    signs[:, 0] = base
    for j in range(1, permutations + 1):
        signs[:, j] = base[rng.permutation(n + m)]
    stats = np.einsum("ij,ij->j", signs, k @ signs)
    observed = float(stats[0])
    p = float((1 + np.sum(stats[1:] >= observed - 1e-12)) / (permutations + 1))
    return observed, p, math.sqrt(sigma2)
