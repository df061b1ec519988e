"""Exponential loss forecasting with iterative smoothing-spline outlier filtering (AutoLRS 1.4).

Given the losses ``y_0 .. y_{n-1}`` of one trial (training losses at step positions ``0..n-1``,
or validation losses at evaluation positions), predict the loss at ``x = horizon``:

1. **Outlier filtering.** Fit a degree-2 smoothing spline (``scipy.interpolate.UnivariateSpline``,
   ``k=2``) to the points kept so far and rank the absolute residuals.

   * ``kind="train"``: up to 10 rounds; each round marks the ``round(0.03 * m)`` largest
     residuals (``m`` = points still kept, round half up) and drops those lying in the first half
     of the window (``x`` below the x-value at position ``int((n - 1) / 2)``). The filter stops
     early when a round drops nothing. *Fix of the original:* when ``round(0.03 * m)`` is 0
     (windows under 17 points) nothing is marked; the original's ``[-0:]`` slice marked every
     point and so dropped the whole first half.
   * ``kind="val"``: one round marking the single largest residual (dropped if in the first half).

   At most the first half is ever dropped, so at least ``n // 2 + 1 >= 3`` points remain.

2. **Smoothing.** Fit the spline to the kept points and evaluate it at *all* ``n`` positions.
   The spline (in the filter too) is fitted against ``u = log(1 + 5 t) / log(6)``, where
   ``t = (x - x_0) / (x_{n-1} - x_0)`` is the position in the window: this stretches the start of
   the window, where losses after an LR change move fastest. On a plain ``x`` axis a smoothing
   spline's boundary bias there makes the first-half filter drop the earliest points round after
   round, which flattens the curve (on noisy exponentials the forecast error roughly halves).
   *Scale-free smoothing factor* (the original used scipy's default ``s = n``, i.e. it assumed a
   noise standard deviation of 1 in the loss's own units, which barely smooths summed losses and
   flattens tiny ones): ``s = m * sigma^2 + sum_i (r_i^2 - 9 sigma^2)_+`` over the ``m`` points
   used. ``sigma`` is a robust noise estimate from second differences (their standard deviation
   after winsorising at 3 MADs, over sqrt(6)); ``r_i`` are the residuals of a 5-point running
   median. The first term is the textbook ``s`` (the expected residual sum of squares of the
   noise); the second lets the spline pass by gross outliers instead of adding knots to chase
   them. Both scale with ``y^2`` and ignore shifts, so the result does not depend on the loss's
   units. (Internally ``y`` is centred on its median and divided by its largest deviation;
   ``sigma`` is floored at 3e-4 of that range, which keeps noiseless series fast.)

3. **Fit.** ``y(x) = a * exp(b * x) + c`` with ``b = -exp(theta) < 0`` and, for a loss bounded
   below, ``c >= floor`` (``floor=None``: unbounded). For fixed ``theta``, ``(a, c)`` is a linear
   least-squares problem with closed form (with ``c`` pinned to the floor when the free
   optimum lies below it); ``theta`` is found by a dense grid over rates (window-relative rate
   ``1 .. 1e4``) followed by bounded Brent refinement (``scipy.optimize.minimize_scalar(
   method="bounded")``) between the grid neighbours of the best grid point. *The floor of 1*
   (at least one e-fold of the decay inside the window) is a deliberate prior: a slower decay
   looks like a straight line in the window, its asymptote is not identified by the data, and
   the fit would extrapolate that line far below anything observed (a short trial at a tiny
   LR, sloping gently, was forecast at a loss 60 % below its peers and won its stage). With
   the floor a window that falls by ``d`` forecasts a further fall of at most about ``0.58 d``,
   so slow trials are judged on what they showed; and a forecast is never below ``floor``.

4. **Forecast** ``max(a * exp(b * horizon) + c, floor)``, ``horizon`` in the same units and
   origin as ``x`` (default ``x = 0..n-1``, so ``horizon = tau`` predicts the loss ``tau`` steps
   after the start).

5. **Uncertainty** ``Fit.std`` (one standard deviation of the forecast), from three sources
   combined in quadrature, with the noise level ``sigma`` of step 2: the range of forecasts
   over the decay rates the data cannot tell from the best (profile likelihood with known
   noise variance: residual sum of squares within ``3.84 sigma^2`` of the minimum; half the
   range over 1.96); the least-squares covariance of ``(a, c)`` at the best rate; and, when
   the asymptote is not identified (the plausible rates reach the slowest one, or ``c`` sits
   on the floor), the whole extrapolated fall below the window's last smoothed value
   (``Fit.last``). So ``value + std`` of a window that only shows a straight decline is about
   its last value: a decision that uses it judges such a window on what it showed.

Numeric outcomes, never exceptions or strings, for bad series (``Fit.status`` says which):

=============  ============================================================================
``ok``         the fit above
``flat``       all values equal: that value (``a = 0``)
``short``      1 to 3 points: the last value, no extrapolation (``a = 0``)
``empty``      no points: ``penalty``
``nonfinite``  any NaN/inf in the window (divergence): ``penalty``
``overflow``   the forecast itself is not finite (e.g. values near 1e308): ``penalty``
=============  ============================================================================

``penalty`` defaults to :data:`PENALTY` (1e6, what the original told its optimiser for NaN).
It is only a number to store and display: callers that compare forecasts should test
``Fit.failed`` and rank failed trials after every finite forecast, because a real forecast
may exceed any fixed constant (summed losses, say). :class:`autolrs.tuners.autolrs_tuner.AutoLRSTuner`
does exactly that.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import UnivariateSpline
from scipy.ndimage import median_filter
from scipy.optimize import minimize_scalar

#: Forecast given to a window that holds a non-finite value or nothing at all.
PENALTY = 1e6

#: Statuses that mean "no usable forecast" (the value is the penalty).
FAILED = ("empty", "nonfinite", "overflow")

_TRAIN_ROUNDS = 10
_FILTER_RATIO = 0.03
_SPLINE_K = 2
_MIN_POINTS = 4
# Window-relative decay rates searched (rate * window length): 1 is one e-fold over the window
# (slower decays are not identifiable from it; see the module doc), 1e4 a jump inside its
# first step.
_LOG_RATE_LO, _LOG_RATE_HI = math.log(1.0), math.log(1e4)
_GRID = 65
_WARP = 5.0  # spline axis u = log(1 + 5 t) / log(6), t = window position in [0, 1]
_SIGMA_FLOOR = 3e-4  # in units of the window's largest deviation from its median


@dataclass(frozen=True)
class Fit:
    """A forecast and the fitted model ``y = a * exp(b * x) + c`` in the caller's ``x`` units.

    ``std`` is the forecast's uncertainty (one standard deviation, same units as ``value``; see
    the module doc), ``last`` the smoothed loss at the window's end."""

    value: float
    a: float
    b: float
    c: float
    status: str
    kept: int  # points kept after outlier filtering (window length when not filtered)
    std: float = 0.0
    last: float = math.nan

    @property
    def failed(self) -> bool:
        return self.status in FAILED


def forecast(
    y: Sequence[float],
    horizon: float,
    kind: str = "train",
    *,
    x: Sequence[float] | None = None,
    penalty: float = PENALTY,
    floor: float | None = 0.0,
) -> float:
    """The loss predicted at ``x = horizon`` (a float; ``penalty`` for unusable windows)."""
    return fit_forecast(y, horizon, kind, x=x, penalty=penalty, floor=floor).value


def fit_forecast(
    y: Sequence[float],
    horizon: float,
    kind: str = "train",
    *,
    x: Sequence[float] | None = None,
    penalty: float = PENALTY,
    floor: float | None = 0.0,
) -> Fit:
    """Like :func:`forecast` but returns the whole :class:`Fit`. ``floor``: the loss's lower
    bound (0 for cross-entropy or MSE; None for a loss that can be negative)."""
    if kind not in ("train", "val"):
        raise ValueError(f"kind must be 'train' or 'val', got {kind!r}")
    horizon = float(horizon)
    if not math.isfinite(horizon):
        raise ValueError(f"horizon must be finite, got {horizon!r}")
    if floor is not None and not math.isfinite(floor):
        raise ValueError(f"floor must be finite or None, got {floor!r}")
    penalty = float(penalty)
    nan = math.nan
    try:
        ys = np.asarray(y, dtype=float).ravel()
    except (TypeError, ValueError):  # None or strings inside: treat as divergence/garbage
        return Fit(penalty, nan, nan, nan, "nonfinite", 0)
    n = ys.size
    if x is None:
        xs = np.arange(n, dtype=float)
    else:
        xs = np.asarray(x, dtype=float).ravel()
        if xs.size != n or not np.all(np.isfinite(xs)) or (n > 1 and not np.all(np.diff(xs) > 0)):
            raise ValueError("x must be finite, strictly increasing and as long as y")
    if n == 0:
        return Fit(penalty, nan, nan, nan, "empty", 0)
    if not np.all(np.isfinite(ys)):
        return Fit(penalty, nan, nan, nan, "nonfinite", n)
    if n < _MIN_POINTS:
        last = float(ys[-1])
        return Fit(last, 0.0, 0.0, last, "short", n, std=float(np.std(ys)), last=last)

    # Centre and scale, so that huge or tiny losses behave alike and nothing overflows.
    loc = float(np.median(ys))
    dev = np.abs(ys - loc)
    scale = float(dev.max())
    if not math.isfinite(scale) or not math.isfinite(loc):  # |y| near 1e308: y - loc overflowed
        return Fit(penalty, nan, nan, nan, "overflow", n)
    if scale == 0.0 or scale <= 1e-13 * abs(loc):
        last = float(ys[-1])
        return Fit(last, 0.0, 0.0, last, "flat", n, last=last)
    z = (ys - loc) / scale
    x0, xspan = float(xs[0]), float(xs[-1] - xs[0])
    t = (xs - x0) / xspan
    floor_z = -math.inf if floor is None else (float(floor) - loc) / scale

    # The spline works on a log-time axis that stretches the start of the window, where
    # losses move fastest (see the module docstring).
    u = np.log1p(_WARP * t) / math.log1p(_WARP)
    keep, smooth = _filter_and_smooth(u, z, kind)
    h = (horizon - x0) / xspan
    exp_fit = _fit_exponential(t, smooth, floor_z, h, _noise_sigma(z))
    rate, a_z, c_z = exp_fit.rate, exp_fit.a, exp_fit.c

    with np.errstate(all="ignore"):
        value = loc + scale * max(a_z * math.exp(-rate * h) + c_z, floor_z)
        b = -rate / xspan
        a = scale * a_z * math.exp(rate * x0 / xspan) if rate * x0 / xspan < 700 else math.inf
        c = loc + scale * c_z
        last = loc + scale * float(smooth[-1])
        std = scale * exp_fit.std
    if not math.isfinite(value):
        return Fit(penalty, nan, nan, nan, "overflow", int(keep.sum()))
    return Fit(float(value), float(a), float(b), float(c), "ok", int(keep.sum()), std=float(std), last=float(last))


def noise_sigma(y: np.ndarray) -> float:
    """Robust noise std of a series from its second differences (a local linear trend
    cancels): their standard deviation after winsorising at 3 MADs, divided by sqrt(6). NaN
    under 4 points."""
    if y.size < 4:
        return math.nan
    d2 = np.diff(y, 2)
    d2 = d2 - np.median(d2)
    mad = 1.4826 * float(np.median(np.abs(d2)))
    clipped = np.clip(d2, -3.0 * mad, 3.0 * mad)
    return math.sqrt(float(np.mean(clipped * clipped)) / 6.0)


def _noise_sigma(z: np.ndarray) -> float:
    """:func:`noise_sigma` of the normalised window, floored (keeps noiseless series fast)."""
    return max(noise_sigma(z), _SIGMA_FLOOR)


def _spline(t: np.ndarray, z: np.ndarray, s: float, at: np.ndarray) -> np.ndarray:
    """Degree-2 smoothing spline through (t, z) evaluated at ``at``; linear interpolation of
    the points themselves if FITPACK fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = UnivariateSpline(t, z, k=_SPLINE_K, s=s)(at)
    except Exception:  # noqa: BLE001 - FITPACK input errors; fall back to no smoothing
        out = None
    if out is None or not np.all(np.isfinite(out)):
        return np.interp(at, t, z)
    return out


class _Smoother:
    """The smoothing factor for any subset of the window: ``s = m * sigma^2 + sum of
    (r_i^2 - (3 sigma)^2)_+`` over the ``m`` points used, ``r_i`` = residuals of a 5-point
    running median. The first term is the expected noise sum of squares; the second is an
    allowance for gross outliers, so the spline does not bend towards spikes (adding knots and
    time) before the filter has removed them."""

    def __init__(self, z: np.ndarray):
        self.sigma2 = _noise_sigma(z) ** 2
        r = z - median_filter(z, size=5, mode="nearest")
        self.excess = np.maximum(r * r - 9.0 * self.sigma2, 0.0)

    def s(self, keep: np.ndarray) -> float:
        return int(keep.sum()) * self.sigma2 + float(self.excess[keep].sum())


def _filter_and_smooth(t: np.ndarray, z: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterative outlier removal, then the spline through the kept points evaluated at every
    ``t``. Returns ``(keep mask, smoothed series)``."""
    n = z.size
    smoother = _Smoother(z)
    keep = np.ones(n, dtype=bool)
    droppable = t < t[int((n - 1) * 0.5)]  # only the first half of the window may go
    rounds = _TRAIN_ROUNDS if kind == "train" else 1
    for _ in range(rounds):
        idx = np.flatnonzero(keep)
        marks = math.floor(_FILTER_RATIO * idx.size + 0.5) if kind == "train" else 1
        if marks == 0:
            break
        fitted = _spline(t[idx], z[idx], smoother.s(keep), t)
        resid = np.abs(z[idx] - fitted[idx])
        worst = idx[np.argsort(resid, kind="stable")[-marks:]]
        drop = worst[droppable[worst]]
        if drop.size == 0:
            return keep, fitted  # nothing changes any more: this spline is the final one
        keep[drop] = False
    return keep, _spline(t[keep], z[keep], smoother.s(keep), t)


@dataclass(frozen=True)
class _ExpFit:
    rate: float
    a: float
    c: float
    std: float  # of the forecast at the horizon, in the fit's (normalised) units


def _fit_exponential(t: np.ndarray, y: np.ndarray, floor: float, h: float, sigma: float) -> _ExpFit:
    """Least-squares ``y ~ a * exp(-rate * t) + c`` with ``c >= floor``, and the uncertainty of
    its value at ``t = h`` (see the module doc, step 5)."""
    ym = y.mean()
    yc = y - ym

    def solve(rates: np.ndarray):
        e = np.exp(-np.outer(rates, t))
        em = e.mean(axis=1, keepdims=True)
        ec = e - em
        var = (ec * ec).sum(axis=1)
        cov = ec @ yc
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(var > 0, cov / var, 0.0)
            rss = (yc @ yc) - np.where(var > 0, cov * cov / var, 0.0)
        c = ym - a * em[:, 0]
        # Where the free asymptote lies below the floor, refit with c on the floor (a alone).
        low = c < floor
        if np.any(low):
            r = y - floor
            ee = (e * e).sum(axis=1)
            a_f = np.where(ee > 0, (e @ r) / ee, 0.0)
            rss_f = ((r[None, :] - a_f[:, None] * e) ** 2).sum(axis=1)
            a, c, rss = np.where(low, a_f, a), np.where(low, floor, c), np.where(low, rss_f, rss)
        return rss, a, c

    grid = np.linspace(_LOG_RATE_LO, _LOG_RATE_HI, _GRID)
    rss, a_grid, c_grid = solve(np.exp(grid))
    i = int(np.argmin(rss))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
    best_theta, best_rss = grid[i], rss[i]
    res = minimize_scalar(
        lambda th: float(solve(np.array([math.exp(th)]))[0][0]),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    if res.success and math.isfinite(res.fun) and res.fun <= best_rss:
        best_theta, best_rss = float(res.x), float(res.fun)
    rate = math.exp(best_theta)
    _, a, c = solve(np.array([rate]))
    a0, c0 = float(a[0]), float(c[0])
    value = a0 * math.exp(-rate * h) + c0

    # Uncertainty. (1) The rates the data cannot tell from the best (profile likelihood with
    # the noise variance known: RSS within 3.84 sigma^2 of the minimum) give a range of
    # forecasts. (2) At the best rate, the noise's effect on a and c (their least-squares
    # covariance). (3) When that range reaches the slowest rate, the asymptote is a prior, not
    # data: anything between the last smoothed value and the forecast is as plausible. The same
    # holds when the asymptote sits on the floor: the floor put it there, not the window.
    sigma2 = sigma * sigma
    plausible = rss <= best_rss + 3.84 * sigma2
    with np.errstate(over="ignore", invalid="ignore"):
        f_grid = np.maximum(a_grid * np.exp(-np.exp(grid) * h) + c_grid, floor)
    spread = 0.0
    if np.any(plausible):
        fp = f_grid[plausible]
        spread = max(float(fp.max()) - value, value - float(fp.min()), 0.0) / 1.96
    e = np.exp(-rate * t)
    g = np.array([math.exp(-rate * h), 1.0])
    if c0 <= floor:  # c is pinned: only a moves
        ee = float(e @ e)
        var_lin = sigma2 * g[0] ** 2 / ee if ee > 0 else 0.0
    else:
        xtx = np.array([[float(e @ e), float(e.sum())], [float(e.sum()), float(t.size)]])
        try:
            var_lin = float(g @ np.linalg.solve(xtx, g)) * sigma2
        except np.linalg.LinAlgError:
            var_lin = 0.0
    unidentified = max(float(y[-1]) - max(value, floor), 0.0) if plausible[0] or c0 <= floor else 0.0
    std = math.sqrt(spread * spread + max(var_lin, 0.0) + unidentified * unidentified)
    return _ExpFit(rate, a0, c0, std)
