"""What a paper table is made of: one spec type for every GLUE table, and the one GLUE column map.

A :class:`TableSpec` names, for each row as the paper prints it, the recipe whose runs fill it (``None``: the paper's
number only), and the GLUE tasks of its columns in the paper's order.  Recipes know nothing of tables: relabelling a
row never changes a run id.  :data:`GLUE_TASKS` says how each task is printed: one column with the task score
(Bondarenko et al. 2021) or one column per evaluation split with its metrics (ZeroQuant's appendix).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..common.registry import Registry


@dataclass(frozen=True)
class GlueTask:
    label: str                                            # the task's column when a table prints its score
    splits: tuple[tuple[str, str, tuple[str, ...]], ...]  # (column, eval split, metrics) when it prints each split


GLUE_TASKS = {
    "cola": GlueTask("CoLA", (("CoLA", "validation", ("matthews_correlation",)),)),
    "sst2": GlueTask("SST-2", (("SST-2", "validation", ("accuracy",)),)),
    "mrpc": GlueTask("MRPC", (("MRPC", "validation", ("accuracy", "f1")),)),
    "stsb": GlueTask("STS-B", (("STS-B", "validation", ("pearson", "spearmanr")),)),
    "qqp": GlueTask("QQP", (("QQP", "validation", ("accuracy", "f1")),)),
    "mnli": GlueTask("MNLI", (("MNLI-m", "matched", ("accuracy",)), ("MNLI-mm", "mismatched", ("accuracy",)))),
    "qnli": GlueTask("QNLI", (("QNLI", "validation", ("accuracy",)),)),
    "rte": GlueTask("RTE", (("RTE", "validation", ("accuracy",)),)),
}
BONDARENKO_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")   # GLUE's own order
MEMORY = "Memory reduction"
ZEROQUANT_ORDER = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb")    # ZeroQuant's appendix tables


@dataclass(frozen=True)
class TableSpec:
    name: str                               # file stem under results/tables and qexp/report/reference
    title: str
    rows: tuple[tuple[str, str | None], ...]  # (row label as printed in the paper, recipe or None)
    tasks: tuple[str, ...] = BONDARENKO_ORDER  # column tasks, in the paper's order
    average: str | None = None              # a mean-over-all-columns column (only when every column exists)
    literature: tuple[str, ...] = ()        # rows of other papers' methods: reference data only, never run
    summary: bool = False                   # the paper prints only the memory reduction and the average (Table 7)

    @property
    def columns(self) -> list[str]:
        """One column per task (its score)."""
        return [GLUE_TASKS[t].label for t in self.tasks]

    @property
    def printed(self) -> list[str]:
        """The result columns as the paper prints them (Table 7: only the memory reduction and the average)."""
        if self.summary:
            return [MEMORY, self.average]
        return [*self.columns, *([self.average] if self.average else [])]

    @property
    def split_columns(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """One column per task and evaluation split: (column, task, split, metrics)."""
        return [(col, t, split, metrics) for t in self.tasks for col, split, metrics in GLUE_TASKS[t].splits]

    @property
    def recipes(self) -> list[str]:
        return [r for _, r in self.rows if r]


TABLE_SPECS: Registry[TableSpec] = Registry("table")


def register(*specs: TableSpec) -> list[TableSpec]:
    """Register the paper tables of one module (names are unique across papers); returns them in order."""
    for spec in specs:
        TABLE_SPECS.register(spec.name)(spec)
    return list(specs)
