"""Judges: one module each, registered in `bon.core.judging` by name and imported only when used."""

from bon.core.judging import JUDGES, JudgeInfo, OptionInfo, build_judge, describe_judges, describe_options

__all__ = ["JUDGES", "JudgeInfo", "OptionInfo", "build_judge", "describe_judges", "describe_options"]
