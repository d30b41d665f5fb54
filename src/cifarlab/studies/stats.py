"""Statistics over repeats: mean, sample std, the 95% t confidence interval, and Welch's t-test."""
from __future__ import annotations

import math
import statistics

from scipy import stats as st


def summarize(xs: list[float], level: float = 0.95) -> dict:
    """n, mean, std (n-1) and the `level` confidence interval of the mean (Student's t)."""
    n = len(xs)
    mean = statistics.fmean(xs)
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = statistics.stdev(xs)
    half = st.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def welch(a: list[float], b: list[float], alpha: float = 0.05) -> dict:
    """Is mean(b) different from mean(a)? Welch's t-test (unequal variances), and the 95% interval
    of the difference b - a with Welch-Satterthwaite degrees of freedom."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least 2 values on each side")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    se = math.sqrt(va + vb)
    if se == 0:  # every repeat identical on both sides: no spread to test against
        return {"difference": diff, "ci_low": diff, "ci_high": diff, "t": None, "df": None,
                "p_value": None if diff == 0 else 0.0, "significant": diff != 0, "alpha": alpha}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    res = st.ttest_ind(b, a, equal_var=False)
    half = st.t.ppf(1 - alpha / 2, df) * se
    return {"difference": diff, "ci_low": diff - half, "ci_high": diff + half, "t": float(res.statistic),
            "df": df, "p_value": float(res.pvalue), "significant": bool(res.pvalue < alpha), "alpha": alpha}
