"""Drift monitoring of one model version: counts in C++, statistics from counts, typed reports.

:class:`DriftMonitor` owns a native ``DriftAccumulator`` built from a :class:`ReferenceProfile`.
Every served batch is counted (not sampled) into per-thread shards of tumbling windows; a window
closes after ``window_rows`` rows or ``window_s`` seconds, whichever first. :meth:`report`
compares the last closed windows with the reference:

* ``psi``: population stability index over all bins (missing included), empty shares floored at
  1e-4;
* ``ks``/``ks_upper``/``ks_p``: binned two-sample KS over the value bins (numerical features).
  ``ks`` is the largest CDF gap at the bin edges; it never exceeds the exact KS statistic of the
  raw values, which lies in ``[ks, ks_upper]`` and exceeds ``ks`` by at most the largest bin share
  (about 1/bins). ``ks_p`` is the asymptotic Kolmogorov p-value with n = n_ref*n_cur/(n_ref+n_cur);
* ``chi2``/``chi2_dof``/``chi2_p``: Pearson chi-square of the window against the reference
  shares, bins with expected count < 5 pooled with their neighbours (see
  ``csrc/drift/drift_statistics.h``).

Decisions: each feature gets one test (KS for numerical, chi-square for categorical features),
corrected across features (Bonferroni by default, or Benjamini-Hochberg). A feature is ``alert``
when its test is significant after correction or its PSI >= psi_alert, ``warn`` when its PSI >=
psi_warn, else ``ok``. Windows with fewer than ``min_rows`` rows are reported but never flagged.
Note that with large windows a significance test finds even tiny, harmless shifts; PSI bands are
the size-independent signal.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from headrace.config import DriftSettings
from headrace.errors import InvalidArgumentError
from headrace.monitoring.drift.profile import (
    Category,
    Data,
    FeatureProfile,
    ReferenceProfile,
    category_value,
    is_missing,
)
from headrace.native import core as _core

Decision = Literal["ok", "warn", "alert"]
CorrectionName = Literal["bonferroni", "bh", "none"]


@dataclass(frozen=True)
class FeatureDrift:
    """Statistics of one feature; None where a statistic is undefined (an empty side)."""

    name: str
    kind: Literal["numerical", "categorical"]
    rows: int
    missing: int
    psi: float | None
    ks: float | None
    ks_upper: float | None
    ks_p: float | None
    chi2: float | None
    chi2_dof: int
    chi2_p: float | None
    test: Literal["ks", "chi2"]
    test_p: float | None
    significant: bool
    decision: Decision


@dataclass(frozen=True)
class DriftReport:
    """Drift of the last ``windows`` closed windows against the reference profile."""

    windows: int  # windows covered, the open one included when asked for
    first_window: int | None
    last_window: int | None
    rows: int
    reference_rows: int
    start_s: float | None
    end_s: float | None
    correction: str
    p_value: float
    enough_rows: bool
    features: tuple[FeatureDrift, ...]

    def flagged(self) -> list[str]:
        """Names of the features whose decision is not ``ok``."""
        return [f.name for f in self.features if f.decision != "ok"]

    def decision(self) -> Decision:
        """The worst decision over all features."""
        decisions = {f.decision for f in self.features}
        return "alert" if "alert" in decisions else "warn" if "warn" in decisions else "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)


@dataclass(frozen=True)
class WindowSummary:
    """One closed window. Times are in the monitor's clock, seconds."""

    index: int
    start_s: float
    end_s: float
    rows: int
    closed_by: str


@dataclass(frozen=True)
class ExportedCounts:
    """Counts of some windows, for merging into another process's monitor of the same profile."""

    counts: npt.NDArray[np.uint64]
    rows: int
    profile_fingerprint: str


def profile_fingerprint(profile: ReferenceProfile) -> str:
    """A hash of the profile's bins: counts only merge between monitors with equal fingerprints."""
    bins = [
        (f.name, f.kind, list(f.edges), [repr(c) for c in f.categories]) for f in profile.features
    ]
    return hashlib.sha256(json.dumps(bins).encode()).hexdigest()[:32]


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class _CategoryCodes:
    """Maps one categorical feature's values to the codes the accumulator counts."""

    def __init__(self, feature: FeatureProfile) -> None:
        self.other = len(feature.categories)
        self.codes: dict[Category, int] = {c: i for i, c in enumerate(feature.categories)}
        numeric = [
            (float(c), i)
            for i, c in enumerate(feature.categories)
            if isinstance(c, int | float) and not isinstance(c, bool)
        ]
        numeric.sort()
        self.keys = np.array([k for k, _ in numeric], dtype=np.float64)
        self.key_codes = np.array([i for _, i in numeric], dtype=np.float64)

    def encode(self, column: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        if column.dtype.kind in "fiu":
            values = column.astype(np.float64, copy=False)
            out = np.full(values.shape, float(self.other))
            if self.keys.size:
                index = np.clip(np.searchsorted(self.keys, values), 0, self.keys.size - 1)
                hit = self.keys[index] == values
                out[hit] = self.key_codes[index[hit]]
            out[np.isnan(values)] = np.nan
            return out
        encoded = [
            math.nan if is_missing(v) else float(self.codes.get(category_value(v), self.other))
            for v in column.tolist()
        ]
        return np.array(encoded, dtype=np.float64).reshape(column.shape)


class DriftMonitor:
    """Counts served batches of one model version and reports drift against its profile.

    ``observe`` may be called from any number of threads at once (the counting releases the GIL).
    ``clock`` (seconds, monotonic) replaces the steady clock; tests pass a fake one.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        config: DriftSettings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.profile = profile
        self.config = config if config is not None else DriftSettings()
        if self.config.bins is not None and self.config.bins != profile.bins:
            raise InvalidArgumentError(
                f"drift: config bins={self.config.bins} but the profile was built with "
                f"bins={profile.bins}; rebuild the profile or drop the setting"
            )
        layout = _core.BinLayout()
        self._codes: dict[int, _CategoryCodes] = {}
        for i, feature in enumerate(profile.features):
            if feature.kind == "numerical":
                layout.add_numerical(np.asarray(feature.edges, dtype=np.float64))
            else:
                layout.add_categorical(len(feature.categories))
                self._codes[i] = _CategoryCodes(feature)
        self._accumulator = _core.DriftAccumulator(
            layout,
            window_rows=self.config.window_rows,
            window_s=self.config.window_s,
            windows_kept=self.config.windows_kept,
            shards=self.config.shards,
            clock=clock,
        )
        self._slices = [
            slice(layout.bin_offset(i), layout.bin_offset(i) + layout.bin_count(i))
            for i in range(layout.feature_count)
        ]
        self._reference = [np.asarray(f.counts, dtype=np.uint64) for f in profile.features]
        self.fingerprint = profile_fingerprint(profile)

    @property
    def feature_count(self) -> int:
        return len(self.profile.features)

    # ---- counting ------------------------------------------------------------------------

    def encode(self, batch: Data) -> npt.NDArray[Any]:
        """The [rows, features] matrix the accumulator counts: float32/float64 batches without
        categorical features pass through untouched; categorical columns become codes."""
        if isinstance(batch, Mapping):
            if not self._codes:
                fast = self._concatenate_numeric(batch)
                if fast is not None:
                    return fast
            columns: list[npt.NDArray[Any]] = []
            for layout in self.profile.inputs:
                if layout.name not in batch:
                    raise InvalidArgumentError(f"drift: batch lacks input {layout.name!r}")
                array = np.asarray(batch[layout.name])
                if layout.one_dimensional:
                    array = array.reshape(-1, 1)
                if array.ndim != 2 or array.shape[1] != layout.columns:
                    raise InvalidArgumentError(
                        f"drift: input {layout.name!r} has shape {array.shape}, the profile "
                        f"expects {layout.columns} columns"
                    )
                columns.extend(array[:, j] for j in range(array.shape[1]))
            if len({c.shape[0] for c in columns}) > 1:
                raise InvalidArgumentError("drift: inputs of one batch differ in rows")
            return self._assemble(columns)
        matrix = np.asarray(batch)
        if matrix.ndim == 1 and self.feature_count == 1:
            matrix = matrix.reshape(-1, 1)
        if matrix.ndim != 2 or matrix.shape[1] != self.feature_count:
            raise InvalidArgumentError(
                f"drift: batch shape {matrix.shape} does not match the profile's "
                f"{self.feature_count} features"
            )
        if not self._codes and matrix.dtype.kind in "fiu":
            return matrix
        return self._assemble([matrix[:, j] for j in range(matrix.shape[1])])

    def _concatenate_numeric(self, batch: Mapping[str, npt.ArrayLike]) -> npt.NDArray[Any] | None:
        """The serving path's common case: numeric inputs joined with one copy (None: take the
        general path, which also explains what does not fit)."""
        parts: list[npt.NDArray[Any]] = []
        for layout in self.profile.inputs:
            raw = batch.get(layout.name)
            if raw is None:
                return None
            array = np.asarray(raw)
            if array.dtype.kind not in "fiu" or array.ndim not in (1, 2):
                return None
            part = array.reshape(array.shape[0], -1)
            if part.shape[1] != layout.columns or (parts and part.shape[0] != parts[0].shape[0]):
                return None
            parts.append(part)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _assemble(self, columns: list[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        rows = columns[0].shape[0] if columns else 0
        out = np.empty((rows, len(columns)), dtype=np.float64)
        for j, column in enumerate(columns):
            codes = self._codes.get(j)
            if codes is not None:
                out[:, j] = codes.encode(column)
            else:
                try:
                    out[:, j] = np.asarray(column, dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    raise InvalidArgumentError(
                        f"drift: feature {self.profile.features[j].name!r} is numerical but the "
                        "batch holds non-numeric values"
                    ) from exc
        return out

    def observe(self, batch: Data) -> None:
        """Count every value of a batch ([rows, features] array or dict of named inputs)."""
        matrix = self.encode(batch)
        self._accumulator.observe(matrix)

    # ---- windows -------------------------------------------------------------------------

    def poll(self) -> bool:
        """Close the open window if it is due (by time, or rows); True if one closed."""
        return self._accumulator.poll()

    @property
    def accumulator(self) -> Any:
        """The native accumulator, for C++ code that counts batches itself (the batcher's
        DriftCountingRunner); only numerical profiles can be counted without encoding."""
        return self._accumulator

    @property
    def windows_closed(self) -> int:
        """Windows closed since the monitor was made (by rows, time or by hand)."""
        return int(self._accumulator.windows_closed)

    def close_window(self) -> int:
        """Close the open window now; returns its index."""
        return self._accumulator.close_window()

    def closed_windows(self) -> list[WindowSummary]:
        """The kept closed windows, oldest first (closes a window that is due first)."""
        self._accumulator.poll()
        return [
            WindowSummary(w.index, w.start_ns / 1e9, w.end_ns / 1e9, w.rows, w.closed_by)
            for w in self._accumulator.closed_windows()
        ]

    def export_counts(self, windows: int = 1) -> ExportedCounts:
        """Exact sum of the last ``windows`` closed windows, for another process to import."""
        merged = self._accumulator.merged(windows)
        return ExportedCounts(merged.counts, merged.rows, self.fingerprint)

    def import_counts(self, exported: ExportedCounts) -> None:
        """Add counts exported by a monitor of the same profile into the open window."""
        if exported.profile_fingerprint != self.fingerprint:
            raise InvalidArgumentError(
                "drift: imported counts come from a different profile (fingerprint "
                f"{exported.profile_fingerprint} vs {self.fingerprint})"
            )
        self._accumulator.import_counts(exported.counts, exported.rows)

    # ---- statistics ----------------------------------------------------------------------

    def report(self, windows: int = 1, include_open: bool = False) -> DriftReport:
        """Statistics and decisions of the last ``windows`` closed windows (fewer if fewer are
        kept), plus the open window so far with ``include_open``, against the reference.
        Closes a window that is due first, as :meth:`poll` does."""
        if windows < 0:
            raise InvalidArgumentError("drift: windows must be >= 0")
        self._accumulator.poll()
        merged = self._accumulator.merged(windows, include_open)
        covered = int(merged.windows)
        return self._report_from_counts(
            merged.counts,
            int(merged.rows),
            covered,
            int(merged.index) - covered + 1 if covered else None,
            int(merged.index) if covered else None,
            merged.start_ns / 1e9 if covered else None,
            merged.end_ns / 1e9 if covered else None,
        )

    def window_reports(self, after: int = -1) -> list[DriftReport]:
        """One report per kept closed window whose index is above ``after``, oldest first (what
        a watcher that last saw window ``after`` has missed). Does not close windows."""
        return [
            self._report_from_counts(
                w.counts, int(w.rows), 1, int(w.index), int(w.index), w.start_ns / 1e9,
                w.end_ns / 1e9,
            )
            for w in self._accumulator.closed_windows()
            if int(w.index) > after
        ]  # fmt: skip

    def _report_from_counts(
        self,
        counts: npt.NDArray[np.uint64],
        rows: int,
        windows: int,
        first: int | None,
        last: int | None,
        start_s: float | None,
        end_s: float | None,
    ) -> DriftReport:
        partial = []
        test_p = []
        for feature, ref, part in zip(
            self.profile.features, self._reference, self._slices, strict=True
        ):
            cur = np.ascontiguousarray(counts[part])
            psi = _core.population_stability_index(ref, cur)
            chi2, dof, chi2_p, _ = _core.chi_square(ref, cur)
            if feature.kind == "numerical":
                ks, ks_upper, ks_p, _ = _core.binned_ks(ref[:-1], cur[:-1])
                p = ks_p
            else:
                ks = ks_upper = ks_p = math.nan
                p = chi2_p
            partial.append(
                (
                    feature,
                    int(cur.sum()),
                    int(cur[-1]),
                    psi,
                    ks,
                    ks_upper,
                    ks_p,
                    chi2,
                    dof,
                    chi2_p,
                    p,
                )
            )
            test_p.append(p)
        rejected = _core.reject_hypotheses(
            np.asarray(test_p, dtype=np.float64), self.config.p_value, self.config.correction
        )
        enough = rows >= self.config.effective_min_rows
        features = []
        for (
            feature,
            n,
            missing,
            psi,
            ks,
            ks_upper,
            ks_p,
            chi2,
            dof,
            chi2_p,
            p,
        ), significant in zip(partial, rejected, strict=True):
            decision: Decision = "ok"
            if enough and not math.isnan(psi):
                if significant or psi >= self.config.psi_alert:
                    decision = "alert"
                elif psi >= self.config.psi_warn:
                    decision = "warn"
            features.append(
                FeatureDrift(
                    name=feature.name,
                    kind=feature.kind,
                    rows=n,
                    missing=missing,
                    psi=_none_if_nan(psi),
                    ks=_none_if_nan(ks),
                    ks_upper=_none_if_nan(ks_upper),
                    ks_p=_none_if_nan(ks_p),
                    chi2=_none_if_nan(chi2),
                    chi2_dof=int(dof),
                    chi2_p=_none_if_nan(chi2_p),
                    test="ks" if feature.kind == "numerical" else "chi2",
                    test_p=_none_if_nan(p),
                    significant=bool(significant) and enough,
                    decision=decision,
                )
            )
        return DriftReport(
            windows=windows,
            first_window=first,
            last_window=last,
            rows=rows,
            reference_rows=self.profile.rows,
            start_s=start_s,
            end_s=end_s,
            correction=self.config.correction,
            p_value=self.config.p_value,
            enough_rows=enough,
            features=tuple(features),
        )
