"""Sweeps: independent compression trials through any ``concurrent.futures.Executor``.

``recipe_grid(model, recipe, grid, data, executor=None)`` runs one :func:`compress` per
point of a parameter grid ({"stage index.key": [values]}), each in a worker of
``executor`` (default: a local ``ProcessPoolExecutor`` of spawned processes; a Dask ``distributed.Client``'s
``get_executor()`` or Ray's executor take its place unchanged, see docs/pipeline.md).
Trials are independent, so the results do not depend on the executor or the order they
finish in.  Each returns its reports (plain data), not its models.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import itertools
import multiprocessing

from ..errors import ArgumentError
from .recipe import METHOD_KEYS, Recipe, load_recipe, recipe_from_dict


def _variants(recipe: Recipe, grid: dict):
    if not isinstance(grid, dict):
        raise ArgumentError(f"grid: expected a dict {{'<stage number>.<key>': [values]}}, got {type(grid).__name__}")
    keys = list(grid)
    for key in keys:
        if not isinstance(key, str):
            raise ArgumentError(f"grid: key {key!r} must be a string '<stage number>.<key>'")
        values = grid[key]
        if not isinstance(values, (list, tuple)) or not values:
            raise ArgumentError(f"grid: key {key!r}: expected a non-empty list of values to try, got {values!r}"
                                + (f" (for one value write [{values!r}])" if not isinstance(values, (list, tuple))
                                   else ""))
        try:
            idx, name = key.split(".", 1)
            if not 1 <= int(idx) <= len(recipe.stages):
                raise IndexError(idx)
            stage = recipe.stages[int(idx) - 1]
        except (ValueError, IndexError):
            raise ArgumentError(f"grid: key {key!r} must be '<stage number>.<key>' of the recipe's "
                                f"{len(recipe.stages)} stages") from None
        if name not in stage.params:
            raise ArgumentError(f"grid: stage {idx} ({stage.kind}) has no key {name!r}")
    for values in itertools.product(*(grid[k] for k in keys)):
        # the keys each stage sets (its defaults stay defaults: a default a method does not
        # use, e.g. epochs of a static quantization, would be refused if set)
        raw = {"name": recipe.name, "stage": [{"kind": s.kind, **{k: s.params[k] for k in s.given}}
                                              for s in recipe.stages]}
        point = dict(zip(keys, values))
        for key, value in point.items():
            idx, name = key.split(".", 1)
            st = raw["stage"][int(idx) - 1]
            if name == "method" and value in METHOD_KEYS.get(st["kind"], {}):
                # the recipe's keys the point's method does not take are dropped; the keys
                # the point itself sets stay (and are refused if meaningless)
                takes = METHOD_KEYS[st["kind"]][value]
                mine = {k.split(".", 1)[1] for k in point if int(k.split(".", 1)[0]) == int(idx)}
                for k in [k for k in st if k not in ("kind", "method") and k not in takes and k not in mine]:
                    del st[k]
            st[name] = value
        yield point, recipe_from_dict(copy.deepcopy(raw), f"{recipe.source} {point}")  # each point validated


def _trial(model, recipe, data, seed):
    from .compress import compress

    return compress(model, recipe, data, seed=seed, repeats=5).to_dicts()


def recipe_grid(model, recipe, grid: dict, data, *, executor: cf.Executor | None = None, seed: int = 0) -> list:
    """[(grid point, reports as dicts)] for every point of ``grid``, in grid order.

    A point whose key sets a stage's ``method`` (``{"2.method": ["static", "qat"]}``) drops
    from that stage the keys the recipe gives it that the new method does not take
    (``recipe.METHOD_KEYS``: e.g. ``epochs`` for ``static``, ``rank`` for ``tucker2``); the
    keys the point itself sets are kept, and refused at validation if the method cannot
    use them."""
    if not isinstance(recipe, Recipe):
        recipe = recipe_from_dict(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    if isinstance(grid, dict) and not grid:
        raise ArgumentError("grid: expected at least one '<stage>.<key>': [values] entry")
    points = list(_variants(recipe, grid))  # every variant validated before any work
    own = executor is None
    # spawn, not fork: a forked child inherits OpenMP's thread pool state, which is not
    # fork-safe; spawned workers start clean
    ex = cf.ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) if own else executor
    try:
        futures = [ex.submit(_trial, model, r, data, seed) for _, r in points]
        return [(p, f.result()) for (p, _), f in zip(points, futures)]
    finally:
        if own:
            ex.shutdown()
