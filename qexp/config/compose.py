"""Where the Hydra config tree lives, and composing a config from overrides outside a Hydra app.

The configs live in the checkout's ``conf/`` (qexp is installed from its repository with ``pip install -e .``, so
results, caches and configs sit side by side); ``QEXP_CONF=/dir`` points at another config tree.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..common.provenance import REPO


class ConfigTreeError(RuntimeError):
    pass


def conf_dir() -> Path:
    d = Path(os.environ.get("QEXP_CONF") or REPO / "conf")
    if not (d / "config.yaml").exists():
        raise ConfigTreeError(f"no config tree at {d} (qexp runs from its repository checkout: pip install -e .; "
                              f"or set QEXP_CONF=/path/to/conf)")
    return d


def compose(overrides: list[str]):
    """The config ``qexp run OVERRIDES`` would run (no Hydra run directory, no logging set-up)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from hydra.errors import ConfigCompositionException

    check_group_choices(list(overrides))   # `model=nope`: the public choices, not Hydra's traceback (issue 27 #15)
    check_added_keys([o for o in overrides if o.startswith("+")])
    overrides = with_default_calibration(list(overrides))
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
            return hcompose("config", overrides=overrides)
    except ConfigCompositionException as e:
        import difflib
        import re

        m = re.search(r"Could not override '([^']+)'", str(e))
        if not m:
            raise UnknownKeyError(f"{e}") from None
        key = m.group(1)
        near = difflib.get_close_matches(key.split(".")[0], sorted(top_level_keys()), n=1)
        hint = f"; did you mean {near[0]!r}?" if near and "." not in key else ""
        raise UnknownKeyError(f"unknown config key {key!r}{hint} (a new key needs +{key}=...)") from None


_PARSED: dict = {}


def read_yaml(path: Path):
    """A config file's YAML, parsed once per content version (keyed by path, size and modification time; a copy is
    returned, so callers may change it): `compose` checks group choices on every call, and parsing the ~300 files
    each time was two thirds of its cost."""
    import copy

    import yaml

    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        _PARSED[key] = yaml.safe_load(path.read_text())
    return copy.deepcopy(_PARSED[key])


def nested_groups(group: str) -> set[str]:
    """Sub-folders of ``group`` that are groups of their own (``model/attention``: a model file's defaults list says
    ``- attention: vanilla``), as opposed to options kept in a sub-folder (``calibration/per_task/rte``)."""
    out = set()
    for p in (conf_dir() / group).glob("*.yaml"):
        data = read_yaml(p) or {}
        for d in (data.get("defaults") or []) if isinstance(data, dict) else []:
            if isinstance(d, dict) and len(d) == 1 and (conf_dir() / group / str(next(iter(d)))).is_dir():
                out.add(str(next(iter(d))))
    return out


def group_options(group: str) -> list[str]:
    """The public options of a config group (files starting with ``_`` are shared partials; a nested group's files,
    ``model/attention/*``, are that group's options)."""
    root = conf_dir() / group
    nested = nested_groups(group) if "/" not in group else set()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")
                  if not p.stem.startswith("_") and p.relative_to(root).parts[0] not in nested)


class UnknownKeyError(ValueError):
    pass


def top_level_keys() -> set[str]:
    """The keys a run's config may hold at the top: the root config's own keys and its groups (``recipe``, ...)."""
    from omegaconf import OmegaConf

    root = OmegaConf.to_container(OmegaConf.load(conf_dir() / "config.yaml"))
    groups = {p.name for p in conf_dir().iterdir() if p.is_dir()} - {"hydra"}
    return (set(root) - {"defaults", "hydra"}) | groups


def check_top_level(cfg) -> None:
    """A key added with ``+`` that no config defines (``+seeed=1``, the spelling Hydra's own hint suggests for a
    typo) is refused, naming the nearest valid key, instead of running under a new run id without a word."""
    import difflib

    valid = top_level_keys()
    for key in cfg:
        if key not in valid:
            near = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise UnknownKeyError(f"unknown config key {key!r}{hint} valid top-level keys: {', '.join(sorted(valid))}")


GROUPS = ("model", "task", "recipe", "calibration", "debug")


def with_default_calibration(overrides: list[str]) -> list[str]:
    """``conf/config.yaml`` picks ``calibration/per_task/<task>``; a task without such a file (a new kind's task YAML)
    calibrates with ``calibration/default`` instead of failing to compose (issue 26 #3: a new kind is one module and
    its task YAML).  Only for a task named on the command line (the default task and the experiments' tasks have
    their files); an explicit ``calibration=`` wins; a sweep that mixes tasks with and without a per-task file is
    refused with what to do (one ``calibration=`` cannot serve both)."""
    keys = [o.lstrip("+~").partition("=") for o in overrides]
    if any(k == "calibration" for k, _, _ in keys):
        return overrides
    chosen = [v for k, eq, v in keys if k == "task" and eq]
    if not chosen or "(" in chosen[-1]:
        return overrides   # the default task or an experiment's choice (both have their files); a sweep function
    tasks = chosen[-1].split(",")
    missing = [t for t in tasks if t and not (conf_dir() / "calibration" / "per_task" / f"{t}.yaml").exists()]
    if not missing:
        return overrides
    if len(missing) != len(tasks):
        raise UnknownKeyError(f"task(s) {', '.join(missing)} have no conf/calibration/per_task/<task>.yaml and the "
                              f"others do: sweep them apart, or give one calibration=NAME for all")
    return [*overrides, "calibration=default"]


def check_group_choices(overrides: list[str]) -> None:
    """``recipe=NAME`` / ``+recipe=a,b`` / ``task=...``: every plain name must be a public option of its group.  Checked
    before Hydra, whose own message also lists the private partials (``_qat``, ``_glue``) as choices; sweep
    functions (``glob(...)``, ``choice(...)``) are left to Hydra."""
    import difflib

    for o in overrides:
        key, eq, value = o.lstrip("+~").partition("=")
        nested = "/" in key and key.split("/")[0] in GROUPS and (conf_dir() / key).is_dir()   # model/attention=...
        if not eq or (key not in GROUPS and not nested) or "(" in value or not value:
            continue
        valid = group_options(key)
        for name in value.split(","):
            if name and name != "null" and name not in valid:
                near = difflib.get_close_matches(name, valid, n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise UnknownKeyError(f"unknown {key} {name!r}{hint} valid: {', '.join(valid)}")


def _union_tree(group: str) -> dict:
    """Every key any config file of ``group`` defines (partials and sub-groups included), merged into one tree."""

    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            elif k not in a or isinstance(v, dict):
                a[k] = v
        return a

    root = conf_dir() / group
    files = {p: read_yaml(p) or {} for p in sorted(root.rglob("*.yaml"))}
    nested = {str(next(iter(d))) for data in files.values() if isinstance(data, dict)
              for d in data.get("defaults") or [] if isinstance(d, dict) and len(d) == 1}   # `- attention: vanilla`
    tree: dict = {}
    for path, data in files.items():
        if not isinstance(data, dict):
            continue
        body = {k: v for k, v in data.items() if k != "defaults"}
        sub = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else None
        merge(tree, {sub: body} if sub in nested else body)   # a sub-group's files sit at its own key
    return tree


def check_added_keys(overrides: list[str]) -> None:
    """``++task.dat_dir=DIR`` / ``+model.atention.alpha=1`` (issue 27 #7): a key *added* with ``+``/``++`` under
    ``task``, ``model`` or ``calibration`` that no config file of the group defines anywhere is a typo, not a new setting: refused with the nearest
    key, before Hydra composes (it would run under a new run id and the key would be read by nothing).  A key below a
    value that some config leaves open (a list, a free-form mapping such as ``recipe.quant.sites``) is not judged."""
    import difflib

    trees: dict[str, dict] = {}
    for o in overrides:
        if not o.startswith("+"):
            continue
        key, eq, _ = o.lstrip("+").partition("=")
        parts = key.split(".")
        if not eq or len(parts) < 2 or parts[0] not in ("task", "model", "calibration"):
            continue   # recipe blocks are parsed by value objects that refuse unknown keys themselves (qpt, bcq, ...)
        node = trees.setdefault(parts[0], _union_tree(parts[0]))
        for depth, part in enumerate(parts[1:], start=1):
            if not isinstance(node, dict) or not node:
                break
            if part not in node:
                near = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                where = ".".join(parts[:depth])
                hint = f"; did you mean {where}.{near[0]}?" if near else ""
                raise UnknownKeyError(f"{o.split('=')[0]}: no config of {parts[0]!r} has a key {'.'.join(parts[:depth + 1])!r}"
                                      f"{hint} (valid under {where}: {', '.join(sorted(map(str, node)))})")
            node = node[part]


def sweep_safe(overrides: list[str]) -> list[str]:
    """``qexp run -m +recipe=a,b recipe.bcq.bits=2``: Hydra composes a multirun's base config once with the sweep
    overrides left out, so a single-valued ``recipe.*`` override would meet a config without a recipe ("Key 'recipe'
    is not in struct") and the sweep would never start.  Such an override (of any group that the command sweeps)
    becomes a one-value sweep, ``recipe.bcq.bits=choice(2)``, which Hydra applies in each job after the group is
    chosen: the jobs see the same value.  Left as typed: deletions, ``null`` and interpolations (``choice`` cannot
    carry them), and every override when no group is swept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    for o in overrides:
        try:
            parsed.append(parser.parse_override(o))
        except Exception:  # noqa: BLE001 - a malformed override is Hydra's to report, with its own message
            parsed.append(None)
    swept = {p.key_or_group for p in parsed if p is not None and p.key_or_group in GROUPS and p.is_sweep_override()}
    if not swept:
        return list(overrides)
    out = []
    for o, p in zip(overrides, parsed):
        key, _, value = o.partition("=")
        if (p is not None and not p.is_sweep_override() and not p.is_delete() and p.key_or_group.split(".")[0] in swept
                and "." in p.key_or_group and value and value != "null" and "${" not in value):
            o = f"{key}=choice({value})"
        out.append(o)
    return out
