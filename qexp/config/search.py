"""A recipe's paper search space (Table 9's estimator search, Tables 10/11's QAT grids) as ``qexp run -m`` sweeps."""
from __future__ import annotations

from .compose import compose


def search_grids(cfg) -> list[dict[str, list]]:
    """A recipe's paper search space as Hydra sweep grids (override key -> values), for the composed task."""
    from omegaconf import OmegaConf

    recipe = cfg.get("recipe")
    if recipe is None:
        raise ValueError("search-space needs a recipe (+recipe=estimator_search, +recipe=qat_w8a8, ...)")
    if recipe.get("search_grids"):
        return [dict(g) for g in OmegaConf.to_container(recipe.search_grids, resolve=True)]
    qat = recipe.get("qat")
    if qat is not None and qat.get("search"):
        grid = qat.search.get(cfg.task.name)
        if grid is None:
            raise ValueError(f"recipe {recipe.name!r} has no search space for task {cfg.task.name!r}; it has one for: "
                             f"{', '.join(qat.search)}")
        return [{f"recipe.qat.{k}": list(v) for k, v in OmegaConf.to_container(grid, resolve=True).items()}]
    raise ValueError(f"recipe {recipe.name!r} defines no search space (recipes with one: estimator_search, qat_*)")


def sweep_commands(overrides: list[str]) -> list[list[str]]:
    """``qexp run -m`` argument lists, one per grid; the user's overrides win over the grid's keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    single = []  # compose with the first value of any sweep the user gave (e.g. seed=0,1,2); the grid is per task
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if o.is_sweep_override():
            if o.key_or_group == "task":
                raise ValueError(f"search-space takes one task (its grid is per task), got {text!r}")
            text = f"{text.split('=', 1)[0]}={next(iter(o.sweep_string_iterator()))}"
        single.append(text)
    grids = search_grids(compose(single))
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}

    def fmt(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return [["run", "-m", *overrides, *(f"{k}={','.join(fmt(v) for v in vs)}" for k, vs in g.items() if k not in given)]
            for g in grids]
