"""Checks of a Spec against the store before any work: each refuses in one sentence what the
analysis would fail on, or score wrongly, later."""

from __future__ import annotations

import dataclasses

import numpy as np

from analyze import policies
from analyze.jobs import documents_of
from analyze.policies import budget
from analyze.spec import Spec, defined_in, setting_names
from core import schema, settings
from core.errors import UsageError
from core.runstore import StorePlan


def check_rows(spec: Spec, plan: StorePlan) -> None:
    """A policy that needs more attention rows stored whole than the dump kept is refused up front."""
    for m, lab in zip(spec.policies, spec.labels):
        for n in plan.lengths:
            observed, stored = plan.rows[n]
            need = m.rows_needed(observed)
            if need > stored:
                raise UsageError(
                    f"{lab} needs the last {need} attention rows stored whole, but length {n} of "
                    f"{plan.path!r} stores {stored} of its W = {observed}: use window=0 (their stored sum), "
                    f"window={stored} or fewer, or re-dump with --window-rows {need}"
                )


def check_keys(spec: Spec, plan: StorePlan) -> None:
    """A key scorer on a store dumped without its keys is refused up front."""
    from core.runstore import PART_OF, _open

    stored = schema.stored_parts(
        dict(plan.attrs.get("settings", {})).get("store", "stats"), plan.attrs.get("schema_version", "")
    )
    what = {
        "keys": "keys from the keys themselves",
        "queries": "keys by the queries' moments and the values' norms",
        "kvzip": "keys by KVzip's reconstruction",
    }
    for m, lab in zip(spec.policies, spec.labels):
        parts = sorted({PART_OF[v] for v in m.reads if v in PART_OF})
        for part in parts:
            if part not in stored:
                raise UsageError(
                    f"{lab} scores {what[part]}, but {plan.path!r} was dumped without them: "
                    f"re-dump with --store stats,{'keys,' if part == 'queries' else ''}{part}"
                )
        if parts and plan.lengths:  # stores with keys from before the query moments existed
            g = _open(plan.path)[schema.group_name(plan.lengths[0])]
            missing = [v for v in PART_OF if v in m.reads and v not in g]
            if missing:
                raise UsageError(
                    f"{lab} reads {missing[0]}, which {plan.path!r} predates: "
                    f"re-dump it with --store stats,{PART_OF[missing[0]]}"
                )


def check_folds(spec: Spec, plan: StorePlan) -> None:
    """A policy that learns on the other calibration fold (duo) needs finished documents in both folds."""
    from analyze.policies.base import fold_of

    needing = [lab for lab, m in zip(spec.labels, spec.policies) if m.calibrates_on_folds]
    if not needing:
        return
    folds = {fold_of(int(d), int(s)) for n in plan.lengths for d, s in zip(*np.nonzero(plan.done[n]))}
    if folds != {0, 1}:
        raise UsageError(
            f"{needing[0]} learns on the documents of the other calibration fold ((depth index + "
            f"sample) % 2), and {plan.path!r} has finished documents in fold {sorted(folds)} only: dump two "
            "depths or samples"
        )


def check_blocks(spec: Spec, plan: StorePlan) -> None:
    """A block policy's block must be a multiple of every stored block size."""
    for m in spec.policies:
        for stored in sorted(set(plan.blocks.values())):
            if m.block and m.block % stored:
                raise UsageError(
                    f"{m.name}:block={m.block} must be a multiple of the stored block size {stored}"
                )


def check_budgets(spec: Spec, plan: StorePlan) -> list[str]:
    """A sparsity that leaves 0 keys per head at some length is refused; a budget below a policy's own
    minimum (`Policy.minimum_keys`) is returned as a warning (printed, and recorded in RESULTS)."""
    warnings_ = []
    for sp in spec.sparsities:
        for n in plan.lengths:
            k = budget(sp, n)
            if k == 0:
                raise UsageError(
                    f"--sparsity {sp:g} keeps round((1 - {sp:g}) x {n}) = 0 keys per head at length {n}: "
                    f"every policy would keep nothing; use sparsities below {1 - 0.5 / n:.6g} at this length"
                )
            for m, lab in zip(spec.policies, spec.labels):
                need = m.minimum_keys(plan.rows[n][0])
                if m.budget_for(k, n) < need:
                    warnings_.append(
                        f"{lab} at sparsity {sp:g}, length {n}: a budget of {k} keys is below its minimum {need}"
                    )
    return warnings_


def check_setting(spec: Spec, plan: StorePlan | None = None) -> None:
    """A policy that reads what its setting hides is refused up front (reading it raises anyway); the
    agnostic setting needs a store with the context's own statistics (RUN schema 2.3)."""
    from core.runstore import has_context

    for name in setting_names(spec):
        if settings.get(name).context_only and plan is not None and not has_context(plan.path):
            raise UsageError(
                f"store {plan.path!r} has no context-only statistics (dumped before RUN schema 2.3): the "
                f"{name} setting needs them; re-dump it with `python -m dump` into a new --out"
            )
        if not defined_in(spec.policies, name):
            raise UsageError(
                f"none of the policies {', '.join(spec.labels)} can be scored in the {name} setting"
            )
        hidden = set(settings.get(name).hides)
        for m in defined_in(spec.policies, name):
            seen = hidden & set(m.reads)
            if seen:
                raise UsageError(
                    f"{policies.label(m)} reads {', '.join(sorted(seen))}, which the {name} setting hides: "
                    f"choose policies that do not read it, or another --setting"
                )


def preflight(path: str, spec: Spec, plan: StorePlan) -> Spec:
    """Every check of a run before any work, for every caller of `run` (the CLI, a study, a script):
    blocks, stored rows, the setting, and for --answers the model and the device. Returns the spec
    with its answer device resolved."""
    from core.outputs import check_not_being_written

    check_not_being_written(path)
    check_blocks(spec, plan)
    check_rows(spec, plan)
    check_keys(spec, plan)
    check_folds(spec, plan)
    check_budgets(spec, plan)
    check_setting(spec, plan)
    if not documents_of(plan):
        raise UsageError(f"store {path!r} has no finished documents to analyze")
    if spec.answers:
        from analyze.answers import check_filler, check_model
        from core.lm.models import resolve_device

        check_model(path)  # refused here, before any work, if the dump's model cannot be used
        check_filler(dict(plan.attrs.get("settings", {})), path)  # the documents rebuild from it
        spec = dataclasses.replace(spec, answer_device=resolve_device(spec.answer_device, "--answer-device"))
    return spec
