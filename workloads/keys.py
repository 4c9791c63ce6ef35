"""Key choosers: which of ``n_keys`` keys (named ``"k0"`` ... ``f"k{n_keys - 1}"``) an operation touches.

A chooser is a small picklable object (it travels to the load generator actors) that draws keys
in batches with :meth:`KeyChooser.sample`, so drawing a key costs a fraction of a microsecond.
Its lookup tables are built on first use in each process, never pickled.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class KeyChooser(Protocol):
    """What a mix needs of a key distribution."""

    n_keys: int

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        """Draw ``n`` key names."""
        ...

    def describe(self) -> str:
        """A short human-readable description, e.g. ``"zipfian(n=1000, s=0.99)"``."""
        ...


def key_name(i: int) -> str:
    """The name of key number ``i``."""
    return f"k{i}"


class _Chooser:
    """Shared machinery: the key names as a numpy object array, built lazily per process."""

    n_keys: int

    def __init__(self, n_keys: int) -> None:
        if not isinstance(n_keys, int | np.integer) or n_keys < 1:
            raise ValueError(f"n_keys must be a positive integer, got {n_keys!r}")
        self.n_keys = int(n_keys)
        self._names: np.ndarray | None = None

    def names(self) -> np.ndarray:
        """All key names, index ``i`` holding ``f"k{i}"`` (a numpy object array)."""
        if self._names is None:
            self._names = np.array([key_name(i) for i in range(self.n_keys)], dtype=object)
        return self._names

    def _indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        """Draw ``n`` key names (with replacement)."""
        return self.names()[self._indices(rng, n)].tolist()

    def __getstate__(self) -> dict[str, Any]:
        # the caches are rebuilt where the chooser is used: only the parameters travel
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _reset(self) -> None:
        self._names = None

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *sorted(self.__getstate__().items())))

    def __repr__(self) -> str:
        return self.describe()


class Uniform(_Chooser):
    """Every key equally likely. Build one with :func:`uniform`."""

    def _indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.n_keys, size=n)

    def describe(self) -> str:
        """E.g. ``"uniform(n=1000)"``."""
        return f"uniform(n={self.n_keys})"


class Zipfian(_Chooser):
    """The key of popularity rank ``r`` (1 = hottest) is drawn with probability proportional to
    ``1 / r**s``, as in YCSB. Build one with :func:`zipfian`.

    With ``scramble`` (the default) ranks are mapped to keys by a fixed permutation, so the hot
    keys are spread over the key space rather than being ``k0``, ``k1``, ...; the permutation
    depends only on ``n_keys``, so every process (and every run) agrees on which keys are hot.
    """

    def __init__(self, n_keys: int, s: float = 0.99, scramble: bool = True) -> None:
        super().__init__(n_keys)
        if not s > 0:
            raise ValueError(f"the zipfian exponent s must be positive, got {s!r}")
        self.s = float(s)
        self.scramble = bool(scramble)
        self._cdf: np.ndarray | None = None
        self._rank_to_key: np.ndarray | None = None

    def _reset(self) -> None:
        super()._reset()
        self._cdf = None
        self._rank_to_key = None

    def _tables(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cdf is None:
            weights = np.arange(1, self.n_keys + 1, dtype=np.float64) ** -self.s
            cdf = np.cumsum(weights)
            cdf /= cdf[-1]
            cdf[-1] = 1.0  # rounding must not leave a uniform draw above the last bucket
            self._cdf = cdf
            if self.scramble:
                self._rank_to_key = np.random.default_rng(self.n_keys).permutation(self.n_keys)
        return self._cdf, self._rank_to_key

    def probabilities(self) -> np.ndarray:
        """The probability of each key, indexed by key number (``p[i]`` is ``f"k{i}"``'s)."""
        cdf, perm = self._tables()
        by_rank = np.diff(cdf, prepend=0.0)
        if perm is None:
            return by_rank
        p = np.empty_like(by_rank)
        p[perm] = by_rank
        return p

    def hottest(self, k: int) -> list[str]:
        """The names of the ``k`` most likely keys, hottest first."""
        _, perm = self._tables()
        ranks = np.arange(min(k, self.n_keys))
        return self.names()[ranks if perm is None else perm[ranks]].tolist()

    def _indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cdf, perm = self._tables()
        ranks = np.searchsorted(cdf, rng.random(n), side="right")
        return ranks if perm is None else perm[ranks]

    def describe(self) -> str:
        """E.g. ``"zipfian(n=1000, s=0.99)"``."""
        return f"zipfian(n={self.n_keys}, s={self.s:g}{'' if self.scramble else ', unscrambled'})"


def uniform(n_keys: int = 1000) -> Uniform:
    """Keys drawn uniformly from ``n_keys`` keys."""
    return Uniform(n_keys)


def zipfian(n_keys: int = 1000, s: float = 0.99, scramble: bool = True) -> Zipfian:
    """Keys drawn with YCSB-style skew: rank ``r`` has probability proportional to ``1 / r**s``
    (``s=0.99`` is YCSB's default). See :class:`Zipfian` for ``scramble``."""
    return Zipfian(n_keys, s, scramble)
