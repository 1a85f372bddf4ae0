"""Benchmark figures from many judge results, as the released evaluations report them.

* Failed samples (``ok`` false) are left out and counted, as the released scripts drop them.
* Per group (rubric + category): the mean of every dimension, the *pooled* mean of all dimension
  scores of all samples (OpenVE's per-category figure; RefVIE's per-subtask pooled mean) and the mean
  of the per-sample overall figures.
* ``openve_overall``: the unweighted mean of the OpenVE category pooled means.
* ``refvie_overall``: the pooled mean of every RefVIE score over both subtasks.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["aggregate"]


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def aggregate(results) -> dict:
    """``results``: JudgeResult objects or their ``to_dict()`` dicts."""
    groups: OrderedDict[str, dict] = OrderedDict()
    for r in results:
        d = r.to_dict() if hasattr(r, "to_dict") else dict(r)
        name = d["rubric"] + (f"/{d['category']}" if d.get("category") else "")
        g = groups.setdefault(name, {"rubric": d["rubric"], "category": d.get("category"), "n": 0, "failed": 0,
                                     "dims": OrderedDict(), "overall": []})
        if not d.get("ok"):
            g["failed"] += 1
            continue
        g["n"] += 1
        for k, v in d["scores"].items():
            g["dims"].setdefault(k, []).append(float(v))
        g["overall"].append(float(d["overall"]))
    out: dict = {"groups": {}}
    openve, refvie_all = [], []
    for name, g in groups.items():
        pooled = [v for vs in g["dims"].values() for v in vs]
        entry = {"n": g["n"], "failed": g["failed"],
                 "dimensions": {k: _mean(vs) for k, vs in g["dims"].items()},
                 "pooled_mean": _mean(pooled), "overall_mean": _mean(g["overall"])}
        out["groups"][name] = entry
        if g["rubric"] == "openve" and entry["pooled_mean"] is not None:
            openve.append(entry["pooled_mean"])
        if g["rubric"].startswith("refvie"):
            refvie_all += pooled
    if openve:
        out["openve_overall"] = _mean(openve)
    if refvie_all:
        out["refvie_overall"] = _mean(refvie_all)
    return out
