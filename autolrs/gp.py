"""One-dimensional Bayesian optimisation on the unit interval (log LR scaled to [0, 1]).

The surrogate is scikit-learn's :class:`~sklearn.gaussian_process.GaussianProcessRegressor`
with the kernel scikit-optimize builds for a one-dimensional "GP" optimiser (what the original
AutoLRS used through ``skopt.Optimizer``), plus explicit Gaussian noise::

    ConstantKernel(1.0, (0.01, 1000)) * Matern(length_scale=1.0, (0.05, 100), nu=2.5)
        + WhiteKernel(0.01, (1e-6, 1.0))

(skopt's lower length-scale bound is 0.01; see :data:`LENGTH_SCALE_MIN`) with ``normalize_y=True``
and one L-BFGS run of the marginal likelihood (``n_restarts_optimizer=0``; seeded) of at most
:data:`MAX_ITER` iterations, so the same observations, seed and start always give the same
suggestion (restarts cost more than they changed; the cap cuts the slow tail of fits that creep
along a bound: docs/benchmarks.md has the measurements).

The run starts from the kernel's initial hyper-parameters, or with :func:`suggest_warm` from an
earlier fit's. The AutoLRS tuner passes the stage's previous fit (kept in its state, so a
restarted server suggests the same LR), which needs far fewer iterations.

Acquisitions are computed on the posterior of the noise-free function (the fitted white-noise
variance is taken out of the predictive variance):

* ``"lcb"``: ``mu - kappa * sigma``, minimised. The original's ``kappa = 1e6`` makes the mean
  irrelevant: the next point is where the posterior is least certain (space-filling
  exploration); the caller exploits by picking the best *observed* value.
* ``"ei"``: expected improvement below the best observed value (``xi`` = 0.01 in the
  transformed, normalised units), maximised.

The acquisition is minimised over a dense grid of 1001 points: a resolution of 0.001 of the
interval, far below the shortest length scale the GP may fit (0.05), so refining a grid minimum
with a scalar optimiser changes the LR by under 0.3% for a 3-decade interval and cost a third of
a suggestion's time (one GP prediction per evaluation). A point closer than ``min_distance`` to
an observation is never returned; when the acquisition wants nothing
else, or all observations are alike (nothing to model), the centre of the largest gap between
observations (ends included) is returned. Near-ties of the acquisition go to the grid point
farthest from the observations.

Observations may include failures and absurd values. :func:`transform_objective` maps them to
something a GP can model: successes ``y`` become ``log1p((y - min) / scale)`` (monotone, so the
ranking is kept, but a forecast a million times worse than the rest no longer squashes the
others together), and non-finite values (failures: diverged trials) become the worst success
plus 1. Only numpy, scipy and scikit-learn are used.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import ndtr
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

try:  # a dependency of scikit-learn itself
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover
    ThreadpoolController = None

ACQUISITIONS = ("lcb", "ei")
GRID_POINTS = 1001
MIN_DISTANCE = 0.01
#: skopt allows 0.01; with the ~10 points of a stage a length scale below half their spacing
#: cannot be identified and turns the posterior into spikes at the data (flat everywhere else).
LENGTH_SCALE_MIN = 0.05
#: L-BFGS iterations of the marginal-likelihood fit (see the module docstring).
MAX_ITER = 30
_SQRT_2PI = math.sqrt(2.0 * math.pi)


_controller = None


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread for the duration of a GP fit. The matrices are tiny (about
    10 x 10); a threaded OpenBLAS on a machine whose other cores are busy (a training job next
    to the server, say) spins and made suggestions 5-10 times slower in measurements."""
    global _controller
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def transform_objective(y: ArrayLike) -> np.ndarray:
    """Observed values -> GP targets (see the module docstring). Non-finite = failure."""
    y = np.asarray(y, dtype=float)
    out = np.zeros_like(y)
    ok = np.isfinite(y)
    if not ok.any():
        return out  # nothing but failures: a flat objective, pure exploration
    good = y[ok]
    lo = float(good.min())
    scale = float(np.median(good - lo))
    if not scale > 0:
        scale = float(good.max() - lo)
    if not (scale > 0 and math.isfinite(scale)):
        scale = 1.0
    with np.errstate(over="ignore"):
        t = np.log1p((good - lo) / scale)
    t[~np.isfinite(t)] = 700.0  # (good - lo) overflowed: only for values near 1e308
    out[ok] = t
    out[~ok] = float(t.max()) + 1.0
    return out


def make_gp(seed: int = 0) -> GaussianProcessRegressor:
    kernel = ConstantKernel(1.0, (0.01, 1000.0)) * Matern(
        length_scale=1.0, length_scale_bounds=(LENGTH_SCALE_MIN, 100.0), nu=2.5
    ) + WhiteKernel(noise_level=0.01, noise_level_bounds=(1e-6, 1.0))
    return GaussianProcessRegressor(
        kernel=kernel,
        normalize_y=True,
        n_restarts_optimizer=0,
        optimizer=_fit_hyperparameters,
        random_state=np.random.RandomState(seed % (2**32)),
    )


def _fit_hyperparameters(obj_func, initial_theta: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, float]:
    """scikit-learn's default optimiser (L-BFGS-B on the negative log marginal likelihood and
    its gradient) with at most :data:`MAX_ITER` iterations."""
    result = minimize(
        obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds, options={"maxiter": MAX_ITER}
    )
    return result.x, float(result.fun)


class Posterior:
    """A GP fitted to ``(x, y)`` (``x`` in [0, 1], ``y`` raw observations, NaN/inf allowed)."""

    def __init__(self, x: ArrayLike, y: ArrayLike, seed: int = 0, theta0: ArrayLike | None = None):
        self.x = np.asarray(x, dtype=float).ravel()
        self.y = transform_objective(y)
        if self.x.size != self.y.size or self.x.size == 0:
            raise ValueError("need as many x as y, and at least one")
        self.gp = make_gp(seed)
        if theta0 is not None:  # start the fit from an earlier fit's hyper-parameters
            self.gp.kernel = self.gp.kernel.clone_with_theta(
                _within(np.asarray(theta0, dtype=float), self.gp.kernel.bounds)
            )
        with warnings.catch_warnings(), single_threaded_blas():
            warnings.simplefilter("ignore")  # ConvergenceWarning at hyper-parameter bounds
            self.gp.fit(self.x[:, None], self.y)
        kernel = self.gp.kernel_
        #: The fitted hyper-parameters (log scale), to warm-start the next fit with.
        self.theta = [float(v) for v in kernel.theta]
        self._noise = float(kernel.k2.noise_level) * float(np.asarray(self.gp._y_train_std).ravel()[0]) ** 2
        self.best = float(self.y.min())

    def predict(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the noise-free function at ``u``."""
        mu, sd = self.gp.predict(np.asarray(u, dtype=float).reshape(-1, 1), return_std=True)
        var = np.maximum(sd * sd - self._noise, 0.0)
        return mu, np.sqrt(var)

    def acquisition(self, u: np.ndarray, kind: str = "lcb", kappa: float = 1e6, xi: float = 0.01) -> np.ndarray:
        """Acquisition values at ``u``; lower is better for both kinds (EI is negated)."""
        mu, sigma = self.predict(u)
        if kind == "lcb":
            return mu - kappa * sigma
        if kind == "ei":
            improvement = self.best - mu - xi
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(sigma > 0, improvement / sigma, 0.0)
            pdf = np.exp(-0.5 * z * z) / _SQRT_2PI
            ei = np.where(sigma > 0, improvement * ndtr(z) + sigma * pdf, np.maximum(improvement, 0.0))
            return -ei
        raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {kind!r}")


def largest_gap(x: ArrayLike, grid: int = GRID_POINTS) -> float:
    """The grid point of [0, 1] farthest from every ``x`` (the centre of the largest gap)."""
    g = np.linspace(0.0, 1.0, grid)
    x = np.asarray(x, dtype=float).ravel()
    if x.size == 0:
        return 0.5
    dist = np.abs(g[:, None] - x[None, :]).min(axis=1)
    return float(g[int(np.argmax(dist))])


def suggest(
    x: ArrayLike,
    y: ArrayLike,
    *,
    acquisition: str = "lcb",
    kappa: float = 1e6,
    xi: float = 0.01,
    seed: int = 0,
    min_distance: float = MIN_DISTANCE,
    grid: int = GRID_POINTS,
) -> float:
    """The next point in [0, 1] to evaluate, given observations ``y`` at ``x``.

    Deterministic for given arguments. Never within ``min_distance`` of an observed ``x``
    unless the observations leave no such point (then the largest-gap centre).
    """
    return suggest_warm(
        x, y, None, acquisition=acquisition, kappa=kappa, xi=xi, seed=seed, min_distance=min_distance, grid=grid
    )[0]


def suggest_warm(
    x: ArrayLike,
    y: ArrayLike,
    theta0: ArrayLike | None,
    *,
    acquisition: str = "lcb",
    kappa: float = 1e6,
    xi: float = 0.01,
    seed: int = 0,
    min_distance: float = MIN_DISTANCE,
    grid: int = GRID_POINTS,
) -> tuple[float, list[float] | None]:
    """:func:`suggest` with the GP's hyper-parameter fit started from ``theta0`` (an earlier
    fit's, on fewer of the same observations; None: the kernel's defaults). Returns the point
    and the fitted hyper-parameters (None when no GP was fitted), for the next call."""
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {acquisition!r}")
    xs = np.asarray(x, dtype=float).ravel()
    if xs.size == 0:
        return 0.5, None
    if np.ptp(transform_objective(y)) == 0:
        return largest_gap(xs, grid), None  # all alike (or all failed): nothing to model, fill space
    with single_threaded_blas():
        post = Posterior(xs, y, seed, theta0)
        return _minimise_acquisition(post, xs, acquisition, kappa, xi, min_distance, grid), post.theta


def _within(theta: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    if theta.shape != (len(bounds),) or not np.all(np.isfinite(theta)):
        raise ValueError(f"theta0 must be {len(bounds)} finite numbers, got {theta.tolist()}")
    return np.clip(theta, bounds[:, 0], bounds[:, 1])


def _minimise_acquisition(
    post: Posterior, xs: np.ndarray, acquisition: str, kappa: float, xi: float, min_distance: float, grid: int
) -> float:
    g = np.linspace(0.0, 1.0, grid)
    values = post.acquisition(g, acquisition, kappa, xi)
    dist = np.abs(g[:, None] - xs[None, :]).min(axis=1)
    allowed = dist >= min_distance
    values = np.where(allowed & np.isfinite(values), values, np.inf)
    if not np.isfinite(values).any():
        return largest_gap(xs, grid)

    # Near-ties (a flat acquisition: the GP has learnt nothing, or pure exploration far from
    # all data) go to the grid point farthest from the observations, so that the search stays
    # space-filling instead of drifting to the first allowed grid point.
    finite = values[np.isfinite(values)]
    tol = 1e-6 * (float(finite.max()) - float(finite.min())) + 1e-12 * (abs(float(finite.min())) + 1.0)
    near = np.flatnonzero(values <= float(finite.min()) + tol)
    first = int(near[np.argmax(dist[near])])
    return float(g[first])
