"""``dynalign reproduce``: the shipped finding specs, run as studies, judged by their criteria.

Each finding's spec states the claim in words and the criteria, fixed before any run; the runs'
per-seed metrics are summarised, each criterion evaluated with its bootstrap CI, and the finding
gets a verdict: reproduced, not reproduced or inconclusive.
"""

from __future__ import annotations

from dynalign.spec import SpecError, StudySpec


def check_criteria(spec: StudySpec) -> None:
    """Validate a finding spec's criteria against its arms and the known metrics, before runs."""
    if spec.finding is None:
        return
    from analyses.study import is_metric
    from analyses.verdict import CriterionError, validate_criteria

    criteria = spec.finding.get("criteria")
    if not isinstance(criteria, list):
        raise SpecError(f"{spec.name}: [finding] needs [[finding.criteria]] tables")
    try:
        validate_criteria(
            criteria, spec.arm_configs(), is_metric, where=f"{spec.name}.toml: criteria"
        )
    except CriterionError as err:
        raise SpecError(str(err)) from None
