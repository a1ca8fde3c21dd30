"""Judges: one module each, registered in `bon.core.judging` by name and imported only when used."""

from bon.core.judging import JUDGES, JudgeInfo, build_judge, describe_judges

__all__ = ["JUDGES", "JudgeInfo", "build_judge", "describe_judges"]
