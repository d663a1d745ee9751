"""ScanNet instance-segmentation AP (the benchmark protocol as ported by Volt's toolkit), streaming per scene.

`InstanceEvaluator.add(segment, instance, pred_masks, pred_classes, pred_scores)` takes one scene: per-point
semantic ids (-1 void) and instance ids (-1 none), and P predicted masks over the same points with semantic
class ids and scores. It keeps only a per-scene summary (mask sizes, void overlaps and the sparse
prediction x ground-truth intersection counts, found with one bincount), so memory does not grow with the
point count. `compute()` returns {"all_ap", "all_ap_50%", "all_ap_25%", "classes": {name: {"ap", "ap50%",
"ap25%", "prec50%", "rec50%"}}} (fractions; NaN for a class without ground truth).

Protocol (ScanNet's evaluate_semantic_instance.py, VOLT_SPEC.md §2): classes in `ignore_classes` (void,
wall, floor) are neither ground truth nor predictions, and their points are "void". An instance's class is
the segment at its first point. Ground truth and predictions under `min_region_size` points are dropped;
a prediction's IoU with a same-class instance counts only above the threshold. Per ground-truth instance
(in id order) its predictions are scanned in input order: the first above the threshold is a true
positive, later ones are false positives (the highest score stays on the true positive). An unmatched
prediction is a false positive unless more than `threshold` of it lies on void points or on too-small
instances of its class. AP is the area under the step-interpolated precision/recall curve over the unique
scores with the (recall 0, precision 1) end point; AP averages thresholds 0.50:0.05:0.90, AP50/AP25 are
single thresholds; means over classes skip NaN. prec50%/rec50% are taken at the best F1 of the 0.5 curve.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from volt.data.scannet_classes import CLASS_NAMES_20
from volt.engine.instance_submission import _array
from volt.engine.report import _pct
from volt.errors import DataError

__all__ = ["SCANNET20_NAMES", "InstanceEvaluator", "evaluate_scenes", "format_ap_table"]

SCANNET20_NAMES: tuple[str, ...] = CLASS_NAMES_20
AP_OVERLAPS = np.arange(0.5, 0.95, 0.05)  # 0.50 ... 0.90, exactly the benchmark's floats
AP25 = 0.25
_CHUNK = 1 << 24  # mask elements scanned per bincount block (bounds the nonzero() index memory)


def _ints(x: Any, what: str, name: str | None) -> np.ndarray:
    a = _array(x)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise DataError(name, f"{what} must be a 1-D integer array, got {a.dtype} {a.shape}")
    return a.astype(np.int64)


def _ap_curve(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> tuple[float, float, float]:
    """AP, precision and recall at best F1 of one class: thresholds at the unique scores, ascending."""
    order = np.argsort(y_score, kind="stable")
    score, true = y_score[order], y_true[order].astype(np.float64)
    cum = np.concatenate(([0.0], np.cumsum(true)))  # cum[i] = true positives among the i lowest scores
    _, first = np.unique(score, return_index=True)
    tp = cum[-1] - cum[first]  # detections scoring >= each unique score
    fp = (len(score) - first) - tp
    fn = cum[first] + hard_fn  # matched but below the threshold, plus never matched
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    prec, rec = np.append(prec, 1.0), np.append(rec, 0.0)  # the end point at recall 0
    best = int(np.argmax(2 * prec * rec / (prec + rec + 1e-4)))
    padded = np.concatenate((rec[:1], rec, [0.0]))
    widths = 0.5 * padded[:-2] - 0.5 * padded[2:]  # ScanNet's step widths: conv with [-0.5, 0, 0.5]
    return float(np.dot(prec, widths)), float(prec[best]), float(rec[best])


class InstanceEvaluator:
    """Accumulates scenes one at a time; `compute()` gives the ScanNet instance AP table."""

    def __init__(
        self,
        class_names: Sequence[str] = SCANNET20_NAMES,
        ignore_classes: Sequence[int] = (-1, 0, 1),
        min_region_size: int = 100,
        overlaps: Sequence[float] = AP_OVERLAPS,
    ):
        self.class_names = tuple(class_names)
        self.ignore = np.asarray(sorted({int(c) for c in ignore_classes}), dtype=np.int64)
        self.valid = [c for c in range(len(self.class_names)) if c not in set(self.ignore.tolist())]
        self.min_region_size = int(min_region_size)
        ov = np.asarray(overlaps, dtype=np.float64).ravel()
        # AP25 is always evaluated; it is kept out of the AP average as in the benchmark.
        self.overlaps = ov if np.isclose(ov, AP25).any() else np.append(ov, AP25)
        self._scenes: list[dict[str, np.ndarray]] = []

    @property
    def num_scenes(self) -> int:
        return len(self._scenes)

    def reset(self) -> None:
        self._scenes.clear()

    def add(
        self, segment: Any, instance: Any, pred_masks: Any, pred_classes: Any, pred_scores: Any,
        name: str | None = None,
    ) -> None:
        """One scene: segment/instance (N,), pred_masks (P, N) (non-zero = inside), classes (P,), scores (P,)."""
        seg, inst = _ints(segment, "segment", name), _ints(instance, "instance", name)
        cls, scores = _ints(pred_classes, "pred_classes", name), _array(pred_scores).astype(np.float64)
        masks = _array(pred_masks)
        n, p = len(seg), len(cls)
        if p == 0 and masks.size == 0:
            masks = np.zeros((0, n), dtype=bool)  # a scene without predictions, however it was spelled
        if len(inst) != n or masks.shape != (p, n) or scores.shape != (p,):
            raise DataError(name, f"shape mismatch: segment {seg.shape}, instance {inst.shape}, pred_masks "
                                  f"{masks.shape}, pred_classes {cls.shape}, pred_scores {scores.shape}")
        if not np.isfinite(scores).all():
            raise DataError(name, "pred_scores must be finite")
        num_classes = len(self.class_names)
        void = np.isin(seg, self.ignore)

        # Ground truth: one instance per id != -1, class from its first point, ignored classes dropped.
        ids, first, inverse, counts = np.unique(inst, return_index=True, return_inverse=True, return_counts=True)
        gt_cls = seg[first]
        keep = (ids != -1) & ~np.isin(gt_cls, self.ignore)
        if ((gt_cls[keep] < 0) | (gt_cls[keep] >= num_classes)).any():
            raise DataError(name, f"segment ids must lie in [-1, {num_classes - 1}]")
        n_gt = int(keep.sum())
        column = np.full(len(ids), n_gt, dtype=np.int64)  # n_gt = "no valid instance" column
        column[keep] = np.arange(n_gt)
        point_gt = column[inverse.reshape(-1)]

        # Predictions of ignored classes are not evaluated at all; the rest must be known classes.
        kept = ~np.isin(cls, self.ignore)
        if ((cls[kept] < 0) | (cls[kept] >= num_classes)).any():
            raise DataError(name, f"pred_classes must lie in [0, {num_classes - 1}] or be ignored classes")
        rows = np.flatnonzero(kept)
        # One bincount per block over (prediction, instance column, void flag) of every mask point.
        width = 2 * (n_gt + 1)
        table = np.zeros((len(rows), n_gt + 1, 2), dtype=np.int64)
        step = max(1, _CHUNK // max(n, 1))
        for start in range(0, len(rows), step):
            sel = rows[start:start + step]
            block = masks[start:start + len(sel)] if len(rows) == p else masks[sel]  # no copy when all kept
            r, pt = np.divmod(np.flatnonzero(block), max(n, 1))  # flat scan: ~4x faster than 2-D nonzero
            key = r * width + point_gt[pt] * 2 + void[pt]
            table[start:start + len(sel)] = np.bincount(key, minlength=len(sel) * width).reshape(-1, n_gt + 1, 2)
        size = table.sum(axis=(1, 2))
        big = size >= self.min_region_size
        table, rows = table[big], rows[big]
        inter = table[:, :n_gt].sum(axis=2)  # (P', G)
        inter *= cls[rows][:, None] == gt_cls[keep][None, :]  # only same-class pairs are ever compared
        pair_p, pair_g = np.nonzero(inter)
        self._scenes.append({
            "gt_cls": gt_cls[keep], "gt_size": counts[keep],
            "pred_cls": cls[rows], "pred_score": scores[rows], "pred_size": size[big],
            "pred_void": table[:, :, 1].sum(axis=1),
            "pair_p": pair_p, "pair_g": pair_g, "pair_inter": inter[pair_p, pair_g],
        })

    def _merged(self) -> dict[str, np.ndarray]:
        """All scenes' summaries concatenated, with prediction/instance indices made global."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in (self._scenes[0] if self._scenes else ())}
        n_p = n_g = 0
        for s in self._scenes:
            for k, v in s.items():
                out[k].append(v + n_p if k == "pair_p" else v + n_g if k == "pair_g" else v)
            n_p, n_g = n_p + len(s["pred_cls"]), n_g + len(s["gt_cls"])
        return {k: np.concatenate(v) for k, v in out.items()}

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """(AP, best precision, best recall) per valid class and overlap: shapes (C, O) and (2, C, O)."""
        ap = np.full((len(self.valid), len(self.overlaps)), np.nan)
        pr = np.full((2, len(self.valid), len(self.overlaps)), np.nan)
        if not self._scenes:
            return ap, pr
        m = self._merged()
        order = np.lexsort((m["pair_p"], m["pair_g"]))  # instance order, then prediction order
        pp, pg, pi = m["pair_p"][order], m["pair_g"][order], m["pair_inter"][order]
        iou = pi / (m["gt_size"][pg] + m["pred_size"][pp] - pi)
        big_gt = m["gt_size"] >= self.min_region_size
        n_pred, n_gt = len(m["pred_cls"]), len(m["gt_cls"])
        small = ~big_gt[pg]
        ignored = m["pred_void"] + np.bincount(pp[small], weights=pi[small], minlength=n_pred)
        ignored_frac = ignored / np.maximum(m["pred_size"], 1)
        score, gt_cls, pred_cls = m["pred_score"], m["gt_cls"], m["pred_cls"]
        for oi, th in enumerate(self.overlaps):
            above = iou > th
            # Ground-truth side: greedy in (instance, prediction) order; a prediction matches one instance.
            visited = np.zeros(n_pred, dtype=bool)
            tp_score = np.full(n_gt, -np.inf)
            dup_p, dup_s = [], []
            cand = np.flatnonzero(above & big_gt[pg])
            for g, p in zip(pg[cand].tolist(), pp[cand].tolist()):
                if visited[p]:
                    continue
                if tp_score[g] == -np.inf:
                    tp_score[g], visited[p] = score[p], True
                else:  # a duplicate: the lower of the two scores becomes a false positive
                    dup_p.append(p)
                    dup_s.append(min(tp_score[g], score[p]))
                    tp_score[g] = max(tp_score[g], score[p])
            matched = tp_score > -np.inf
            # Prediction side: no same-class instance above the threshold and not mostly on ignored points.
            hit = np.zeros(n_pred, dtype=bool)
            hit[pp[above]] = True
            lone = ~hit & (ignored_frac <= th)
            cls_all = np.concatenate((gt_cls[matched], pred_cls[dup_p], pred_cls[lone]))
            true_all = np.concatenate((np.ones(matched.sum()), np.zeros(len(dup_p) + lone.sum())))
            score_all = np.concatenate((tp_score[matched], np.asarray(dup_s, dtype=np.float64), score[lone]))
            for ci, c in enumerate(self.valid):
                n_c = int((big_gt & (gt_cls == c)).sum())
                if n_c == 0:
                    continue  # no ground truth: the class stays NaN
                if not (pred_cls == c).any():
                    ap[ci, oi], pr[0, ci, oi], pr[1, ci, oi] = 0.0, 0.0, 0.0
                    continue
                sel = cls_all == c
                hard_fn = n_c - int((matched & (gt_cls == c)).sum())
                ap[ci, oi], pr[0, ci, oi], pr[1, ci, oi] = _ap_curve(true_all[sel], score_all[sel], hard_fn)
        return ap, pr

    def compute(self) -> dict[str, Any]:
        """The AP table over all scenes added so far (see the module docstring for the keys)."""
        ap, pr = self._table()
        o50 = np.isclose(self.overlaps, 0.5)
        o25 = np.isclose(self.overlaps, AP25)
        rest = ~o25
        with warnings.catch_warnings():  # all-NaN means (no ground truth anywhere) are NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            out: dict[str, Any] = {
                "all_ap": float(np.nanmean(ap[:, rest])),
                "all_ap_50%": float(np.nanmean(ap[:, o50])) if o50.any() else math.nan,
                "all_ap_25%": float(np.nanmean(ap[:, o25])),
            }
            out["classes"] = {
                self.class_names[c]: {
                    "ap": float(np.mean(ap[ci, rest])),
                    "ap50%": float(np.mean(ap[ci, o50])) if o50.any() else math.nan,
                    "ap25%": float(np.mean(ap[ci, o25])),
                    "prec50%": float(np.mean(pr[0, ci, o50])) if o50.any() else math.nan,
                    "rec50%": float(np.mean(pr[1, ci, o50])) if o50.any() else math.nan,
                }
                for ci, c in enumerate(self.valid)
            }
        return out


def evaluate_scenes(scenes: Iterable[dict[str, Any]], **evaluator_kwargs: Any) -> dict[str, Any]:
    """AP table of scenes given as dicts with segment, instance, pred_masks, pred_classes, pred_scores."""
    ev = InstanceEvaluator(**evaluator_kwargs)
    for i, s in enumerate(scenes):
        ev.add(s["segment"], s["instance"], s["pred_masks"], s["pred_classes"], s["pred_scores"],
               name=s.get("name", f"scene {i}"))
    return ev.compute()


def format_ap_table(result: dict[str, Any], title: str | None = None) -> str:
    """Per-class AP / AP50 / AP25 / Prec50 / Rec50 in percent, then the class means; n/a = no ground truth."""
    names = list(result["classes"])
    width = max([len("class")] + [len(n) for n in names])
    header = f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'AP25':>6}  {'Prec50':>6}  {'Rec50':>6}"
    lines = ([title] if title else []) + [header, "-" * len(header)]
    for name in names:
        r = result["classes"][name]
        cells = "  ".join(_pct(r[k]) for k in ("ap", "ap50%", "ap25%", "prec50%", "rec50%"))
        lines.append(f"{name:<{width}}  {cells}")
    missing = sum(math.isnan(r["ap"]) for r in result["classes"].values())
    lines += [
        "-" * len(header),
        f"{'mean':<{width}}  {_pct(result['all_ap'])}  {_pct(result['all_ap_50%'])}  {_pct(result['all_ap_25%'])}",
        f"means over the {len(names) - missing} of {len(names)} classes with ground truth; AP averages IoU 0.50:0.05:0.90",
    ]
    return "\n".join(lines)
