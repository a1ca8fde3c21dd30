"""Judges: one module each, registered in `bon.core.judging` by name and imported only when used."""

from typing import TYPE_CHECKING

from bon.core.judging import JUDGES, JudgeInfo, OptionInfo, build_judge, describe_judges, describe_options

if TYPE_CHECKING:  # mypy checks every registered class against what the registry promises (nothing runs here)
    from bon.core.judging import JudgeClass
    from bon.judges.autoj import AutoJudge
    from bon.judges.consistency import ConsistencyJudge
    from bon.judges.cosine import CosineJudge
    from bon.judges.ensemble import EnsembleJudge
    from bon.judges.entropy import EntropyJudge
    from bon.judges.length import LengthJudge
    from bon.judges.logprob import LogprobJudge
    from bon.judges.mt_bench import MTBenchJudge
    from bon.judges.pairwise import PairwiseRanking
    from bon.judges.ppl import PPLJudge
    from bon.judges.random_pick import RandomJudge
    from bon.judges.reward_model import RewardModelJudge
    from bon.judges.self_certainty import SelfCertaintyJudge
    from bon.judges.self_eval import SelfEvalJudge
    from bon.judges.selfj import SelfJudge

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
        "self_certainty": SelfCertaintyJudge,
        "logprob": LogprobJudge,
        "entropy": EntropyJudge,
    }

__all__ = ["JUDGES", "JudgeInfo", "OptionInfo", "build_judge", "describe_judges", "describe_options"]
