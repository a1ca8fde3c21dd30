"""Pairwise comparators (one pair at a time, both orders) and the ranking judge built on them.

A comparator answers, for (prompt, a, b), whether a or b is better or they tie. `PairwiseRanking`
turns that into one score per candidate: a full round robin in both orders (N·(N−1) comparisons)
or a linear knock-out (a champion meets each challenger in both orders, 2·(N−1)). Scoring both
orders cancels position bias; a pair whose two orders disagree counts as a tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from bon.core.config import ModelConfig, Strict
from bon.core.judging import Declaration, build_judge, nested_judge_options, nested_options
from bon.core.records import Candidate, Judgement, Prompt
from bon.core.registry import Registry
from bon.engines.contract import SamplingSettings
from bon.judges.autoj import AUTOJ_HUB_ID, wrap
from bon.judges.model_judge import UsesEngine, prompts_by_id, read_prompt_template

FIRST, SECOND, TIE = 0, 1, 2


def scalar_verdict(a: float, b: float, threshold: float) -> int:
    """Two scalar scores as a pairwise verdict: a tie when they differ by less than ``threshold``
    (equal scores always tie), else the higher side. The one tie rule of `bon`, as the Auto-J
    leaderboard states it for reward models; `eval.metrics` searches thresholds with it."""
    if a == b or abs(a - b) < threshold:
        return TIE
    return FIRST if a > b else SECOND


@dataclass(frozen=True)
class PairVerdict:
    """The outcome of one ordered comparison; winner None when the judge's answer is unusable."""

    winner: int | None  # FIRST, SECOND, TIE or None
    flag: str | None = None
    raw: str | None = None


def parse_decision(text: str) -> PairVerdict:
    """Auto-J's verdict: the words after the last "final decision is"."""
    pos = text.rfind("final decision is ")
    if pos == -1:
        return PairVerdict(None, "no 'final decision is' in the judge's output", text)
    rest = text[pos + len("final decision is ") :].strip().lower()
    for prefix, winner in (("response 1", FIRST), ("response 2", SECOND), ("tie", TIE)):
        if rest.startswith(prefix):
            return PairVerdict(winner, None, text)
    return PairVerdict(None, f"unreadable decision {rest[:30]!r}", text)


class AutoJPairwiseOptions(ModelConfig):
    max_tokens: int = Field(1024, ge=1, description="longest comparison, in tokens")
    wrapper: Literal["llama2", "chat"] = Field(
        "llama2", description="llama2 = Auto-J's [INST] ... [/INST]; chat = the judge's chat template"
    )


class AutoJPairwise(UsesEngine):
    """Auto-J's pairwise-with-tie protocol, decoded greedily."""

    Options = AutoJPairwiseOptions
    name = "autoj_pairwise"

    def __init__(self, options: AutoJPairwiseOptions | None = None, engine=None):
        self.options = options or AutoJPairwiseOptions()
        self._engine = engine
        self.template = read_prompt_template("autoj_pairwise_tie.txt")
        self.wrapper = read_prompt_template("llama2_inst.txt")

    def describe(self) -> str:
        weights = self.options.model.removeprefix("embedded:")
        honest = "" if "autoj" in weights.lower() else f", NOT the trained Auto-J weights ({AUTOJ_HUB_ID})"
        return f"Auto-J pairwise protocol on {weights}{honest}"

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[PairVerdict]:
        """Verdicts for (instruction, response 1, response 2) triples."""
        ids = [
            wrap(
                self.engine,
                self.template.format(prompt=q, response=a, response_another=b),
                self.options.wrapper,
                self.wrapper,
            )
            for q, a, b in items
        ]
        greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=self.options.max_tokens)
        return [parse_decision(group[0].text) for group in self.engine.sample(ids, 1, [0] * len(ids), greedy)]


class ScalarComparatorOptions(Strict):
    judge: str = Field("length", description="a registered scalar judge")
    options: dict[str, Any] = Field(default_factory=dict, description="that judge's options")
    tie_threshold: float = Field(
        0.0, ge=0.0, description="scores differing by less than this tie (equal scores always do)"
    )

    @field_validator("options")
    @classmethod
    def _judge_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return nested_judge_options(info.data.get("judge"), value)


class ScalarComparator:
    """Any scalar judge used pairwise: the higher score wins (a tie below the threshold, see `scalar_verdict`)."""

    Options = ScalarComparatorOptions
    name = "scalar"

    def __init__(self, options: ScalarComparatorOptions | None = None):
        self.options = options or ScalarComparatorOptions()
        self.judge = build_judge(self.options.judge, self.options.options)

    def describe(self) -> str:
        return f"scalar judge '{self.options.judge}' compared pairwise (tie below {self.options.tie_threshold:g})"

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[PairVerdict]:
        prompts = [Prompt(f"q{i}", q) for i, (q, _, _) in enumerate(items)]
        cands = [
            Candidate(f"q{i}", k, text, None, 0, 0, "stop", "pair")
            for i, (_, a, b) in enumerate(items)
            for k, text in enumerate((a, b))
        ]
        scores = [j.score for j in self.judge.score(prompts, cands)]
        out = []
        for a, b in zip(scores[0::2], scores[1::2]):
            if a is None or b is None:
                out.append(PairVerdict(None, "the scalar judge failed on one side"))
            else:
                out.append(PairVerdict(scalar_verdict(a, b, self.options.tie_threshold)))
        return out


COMPARATORS: Registry = Registry(
    "pairwise comparator",
    {"autoj": "bon.judges.pairwise:AutoJPairwise", "scalar": "bon.judges.pairwise:ScalarComparator"},
)


class PairwiseOptions(Strict):
    comparator: str = Field("autoj", description="a pairwise comparator: autoj or scalar")
    comparator_options: dict[str, Any] = Field(default_factory=dict, description="the comparator's options")
    mode: Literal["round_robin", "knockout"] = Field(
        "round_robin", description="round_robin = N(N-1) ordered comparisons; knockout = 2(N-1)"
    )

    @field_validator("comparator_options")
    @classmethod
    def _comparator_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("comparator")
        if not isinstance(name, str) or name not in COMPARATORS:  # refused with the close names where it is built
            return value
        return nested_options(COMPARATORS.get(name).Options, value, f"comparator {name!r} options")


def _both_orders(forward: PairVerdict, backward: PairVerdict) -> int | None:
    """Winner of a pair from its two orders (i, j) and (j, i): FIRST = i, SECOND = j, TIE, or None."""
    if forward.winner is None or backward.winner is None:
        return None
    flipped = {FIRST: SECOND, SECOND: FIRST, TIE: TIE}[backward.winner]
    return forward.winner if forward.winner == flipped else TIE


class PairwiseRanking:
    Options = PairwiseOptions
    name = "pairwise"
    summary = "ranks N candidates with a pairwise judge (Auto-J pairwise, or any scalar judge), both orders"
    declaration = Declaration(
        scale="round robin: wins (a tie counts 0.5); knockout: the round it lost in",
        single_turn_reason="Auto-J's pairwise protocol compares two answers to one instruction",
        cpu_default="SmolLM2-135M-Instruct (autoj comparator)",
    )
    needs_reference = False
    hub_id = AUTOJ_HUB_ID

    def __init__(self, options: PairwiseOptions | None = None):
        self.options = options or PairwiseOptions()
        cls = COMPARATORS.get(self.options.comparator)
        self.comparator = cls(cls.Options.model_validate(self.options.comparator_options))

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[PairVerdict]:
        """Its comparator's verdicts on (instruction, shown first, shown second) triples."""
        return self.comparator.compare(items)

    @staticmethod
    def cost(n: int, mode: str) -> int:
        return n * (n - 1) if mode == "round_robin" else 2 * (n - 1)

    def describe(self) -> str:
        per = "N(N-1)" if self.options.mode == "round_robin" else "2(N-1)"
        return f"pairwise {self.options.mode} ({per} comparisons per prompt) with {self.comparator.describe()}"

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        by_prompt: dict[str, list[Candidate]] = {}
        for p, c in zip(prompts_by_id(prompts, candidates), candidates):
            by_prompt.setdefault(p.id, []).append(c)
        table = {p.id: p for p in prompts}
        scores: dict[tuple[str, int], float | None] = {}
        for pid, group in by_prompt.items():
            rank = self._round_robin if self.options.mode == "round_robin" else self._knockout
            scores.update({(pid, c.index): s for c, s in zip(group, rank(table[pid].instruction, group))})
        n = max((len(g) for g in by_prompt.values()), default=0)
        return [
            Judgement(
                c.prompt_id,
                c.index,
                self.name,
                scores[(c.prompt_id, c.index)],
                flag=None
                if scores[(c.prompt_id, c.index)] is not None
                else "every comparison with this candidate failed",
                details={"mode": self.options.mode, "comparisons_per_prompt": self.cost(n, self.options.mode)},
            )
            for c in candidates
        ]

    def _round_robin(self, q: str, group: list[Candidate]) -> list[float | None]:
        pairs = list(permutations(range(len(group)), 2))
        verdicts = dict(zip(pairs, self.comparator.compare([(q, group[i].text, group[j].text) for i, j in pairs])))
        points = [0.0] * len(group)
        usable = [0] * len(group)
        for i, j in pairs:
            if i > j:
                continue
            winner = _both_orders(verdicts[(i, j)], verdicts[(j, i)])
            if winner is None:
                continue
            usable[i] += 1
            usable[j] += 1
            points[i] += {FIRST: 1.0, SECOND: 0.0, TIE: 0.5}[winner]
            points[j] += {FIRST: 0.0, SECOND: 1.0, TIE: 0.5}[winner]
        return [p if u or len(group) == 1 else None for p, u in zip(points, usable)]

    def _knockout(self, q: str, group: list[Candidate]) -> list[float | None]:
        # score = the round a candidate was knocked out in (the final champion: N), so the
        # champion ranks first; it keeps its place on a tie, so an all-tie prompt keeps index 0
        out: list[float | None] = [0.0] * len(group)
        champion = 0
        for challenger in range(1, len(group)):
            a, b = group[champion].text, group[challenger].text
            forward, backward = self.comparator.compare([(q, a, b), (q, b, a)])
            if _both_orders(forward, backward) == SECOND:
                out[champion], champion = float(challenger), challenger
            else:
                out[challenger] = float(challenger)
        out[champion] = float(len(group))
        return out
