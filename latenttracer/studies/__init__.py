"""Studies: each one a module of this package registering a :class:`~latenttracer.studies.base.Study` (its config,
its report section and its ``run``); the Hydra entry point ``python -m experiments.study --config-name <name>``
runs any of them. See :mod:`latenttracer.studies.base` and docs/extending_studies.md."""

from latenttracer.studies.base import (
    STUDIES,
    Context,
    FigureOut,
    Merge,
    MergedStudy,
    MethodEntry,
    OtherSetsError,
    ReportSection,
    Study,
    StudyResult,
    check_sets,
    publish,
)

__all__ = ["STUDIES", "Context", "FigureOut", "Merge", "MergedStudy", "MethodEntry", "OtherSetsError", "ReportSection",
           "Study", "StudyResult", "check_sets", "publish"]
