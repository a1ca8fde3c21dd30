"""Judges: one module each, registered in `bon.core.judging` by name and imported only when used."""

from typing import TYPE_CHECKING

from bon.core.judging import JUDGES, JudgeInfo, OptionInfo, build_judge, describe_judges, describe_options

if TYPE_CHECKING:  # mypy checks every registered class against what the registry promises (nothing runs here)
    from bon.core.judging import JudgeClass
    from judges.autoj import AutoJudge
    from judges.consistency import ConsistencyJudge
    from judges.cosine import CosineJudge
    from judges.ensemble import EnsembleJudge
    from judges.length import LengthJudge
    from judges.mt_bench import MTBenchJudge
    from judges.pairwise import PairwiseRanking
    from judges.ppl import PPLJudge
    from judges.random_pick import RandomJudge
    from judges.reward_model import RewardModelJudge
    from judges.self_eval import SelfEvalJudge
    from judges.selfj import SelfJudge

    REGISTERED: dict[str, JudgeClass] = {
        "selfj": SelfJudge,
        "autoj": AutoJudge,
        "reward_model": RewardModelJudge,
        "pairwise": PairwiseRanking,
        "ppl": PPLJudge,
        "cosine": CosineJudge,
        "self_eval": SelfEvalJudge,
        "consistency": ConsistencyJudge,
        "ensemble": EnsembleJudge,
        "length": LengthJudge,
        "random": RandomJudge,
        "mt_bench": MTBenchJudge,
    }

__all__ = ["JUDGES", "JudgeInfo", "OptionInfo", "build_judge", "describe_judges", "describe_options"]
