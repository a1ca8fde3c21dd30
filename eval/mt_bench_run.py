"""MT-Bench from a bon run: FastChat's model-answer file, and scores per turn and category with the best-of-k gain.

A conversation's later turns were sampled after the run judge's kept answer, so both readers follow
the run judge's selections (`bon.pipeline.turns`). The best-of-k gain of turn 2 is measured on the
candidates sampled after turn 1's best-of-N answer: k varies the pick within a turn, not the history.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bon.core.config import RunConfig
from bon.core.errors import BonError
from bon.core.io import present, read_json_rows, write_jsonl_atomic
from bon.core.names import check_name
from bon.core.outputs import check_file
from bon.core.records import Candidate, Judgement, Prompt, Selection, by_key
from bon.core.rundir import RunDir, RunDirError, load_run
from bon.eval.export import ExportError
from bon.eval.gain import bootstrap, ks_for
from bon.eval.metrics import ci_text
from bon.pipeline.rejudge import judgements_of, run_prompts
from bon.pipeline.selection import char_lengths, secondary_judge, select_all
from bon.pipeline.turns import kept_text, turn_ids


@dataclass(frozen=True)
class Conversations:
    """A finished run's conversations: every turn's prompt, its candidates, and the run judge's selections."""

    first: list[Prompt]  # the source's prompts, one per conversation
    turns: list[Prompt]  # every turn's prompt the run built
    candidates: dict[str, dict[int, Candidate]]
    selected: dict[str, Selection]  # the run judge's selection per turn prompt


def read_conversations(rd: RunDir, config: RunConfig) -> Conversations:
    """The run's conversations as the policy saw them; refused while one is unfinished."""
    turns, selections, cands = run_prompts(rd, config)
    selected = {s.prompt_id: s for s in selections if s.judge == config.judge.name}
    first = [p for p in turns if not p.conversation]  # the source's prompts come first, in source order
    unfinished = [p.id for p in first if not _finished(p, selected)]
    if unfinished:
        raise RunDirError(
            f"{rd.path}: {len(unfinished)} conversations are unfinished (e.g. {unfinished[0]!r}); "
            "finish the run with `bon run` first"
        )
    return Conversations(first, turns, cands, selected)


def _finished(prompt: Prompt, selected: dict[str, Selection]) -> bool:
    """Whether every turn of ``prompt``'s conversation is selected, or it ended at a skipped turn."""
    for pid in turn_ids(prompt):
        if pid not in selected:
            return False
        if selected[pid].skipped:  # did not fit the context: the conversation ends here
            return True
    return True


def answer_turns(conv: Conversations, prompt: Prompt, decline_message: str) -> list[str]:
    """The kept answer of every turn of ``prompt``'s conversation (the decline message where one was skipped)."""
    by_turn = {p.turn: p for p in conv.turns if p.conversation_id == prompt.id}
    out = []
    for k in range(1, max(1, len(prompt.turns)) + 1):
        p = by_turn.get(k)
        text = None if p is None else kept_text(conv.selected[p.id], conv.candidates.get(p.id, {}), decline_message)
        out.append(decline_message if text is None else text)
    return out


def _question_id(qid: str) -> int | str:
    return int(qid) if qid.isdigit() else qid  # FastChat keys answers and judgments by the int question_id


def export_answers(
    run_dir: Path, model_id: str, out_dir: Path, ratings: str | None = None, overwrite: bool = False
) -> tuple[Path, int, Path | None]:
    """Write ``out_dir/model_answer/<model_id>.jsonl`` in FastChat's model-answer format, and with ``ratings`` (a
    judge label of the run) ``out_dir/model_judgment/<ratings>_single.jsonl``: that judge's ratings of the kept
    answers in FastChat's judgment format, for its show_result.py. Returns (answers path, rows, judgments path).

    An earlier export of ``model_id`` there is refused unless ``overwrite``, which replaces it whole: bon's ratings
    of this model go from every judgment file (no stale ratings); other models' rows and FastChat's stay. An answer
    file bon did not write is never replaced."""
    check_name(model_id, "--model-id")  # it becomes a file name, and FastChat's model name
    rd, _, config = load_run(run_dir)
    conv = read_conversations(rd, config)
    rated = _kept_ratings(rd, conv, ratings) if ratings else None  # refused before anything is written
    answers = Path(out_dir) / "model_answer" / f"{model_id}.jsonl"
    judged_path = Path(out_dir) / "model_judgment" / f"{ratings}_single.jsonl" if ratings else None
    check_file(answers, f"MT-Bench answer file of {model_id!r}", _bon_answers, overwrite)
    if judged_path is not None and present(judged_path):
        earlier = _rows(judged_path)
        check_file(judged_path, "FastChat judgment file", lambda _: earlier is not None, True, "")
        if any(_mine(row, model_id) for row in earlier or []) and not overwrite:
            raise ExportError(
                f"{judged_path} holds bon's ratings of {model_id!r} (an earlier export); give --overwrite to "
                "replace that export whole, or another --out"
            )
    if overwrite:
        _forget_export(Path(out_dir), model_id)
    rows = []
    for p in conv.first:
        turns = answer_turns(conv, p, config.selection.decline_message)
        digest = _answer_id(model_id, p.conversation_id, turns)
        rows.append(
            {
                "question_id": _question_id(p.conversation_id),
                "answer_id": digest,  # FastChat draws a shortuuid; this one is stable across exports
                "model_id": model_id,
                "choices": [{"index": 0, "turns": turns}],
                "tstamp": time.time(),
            }
        )
    answers.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(answers, rows)
    if rated is not None and judged_path is not None:
        judged_path.parent.mkdir(parents=True, exist_ok=True)
        others = (_rows(judged_path) or []) if present(judged_path) else []  # other models' rows stay
        write_jsonl_atomic(judged_path, others + [{**row, "model": model_id} for row in rated])
    return answers, len(rows), judged_path


def _answer_id(model_id: str, question_id: str, turns: list[str]) -> str:
    """FastChat draws a shortuuid; bon's is stable across exports, and tells its own answer files apart."""
    return hashlib.sha256(json.dumps([model_id, question_id, turns]).encode()).hexdigest()[:22]


def _bon_answers(path: Path) -> bool:
    """Whether every row of an answer file is one bon wrote (its answer_id is bon's digest of the row)."""
    rows = _rows(path)
    try:
        return rows is not None and all(
            row["answer_id"] == _answer_id(row["model_id"], str(row["question_id"]), row["choices"][0]["turns"])
            for row in rows
        )
    except (KeyError, IndexError, TypeError):
        return False


def _rows(path: Path) -> list[dict] | None:
    """A FastChat JSONL file's rows (None when it cannot be read as one)."""
    try:
        return [row for _, row in read_json_rows(path)]
    except BonError:
        return None


def _mine(row: dict, model_id: str) -> bool:
    """A judgment row bon wrote for ``model_id``: FastChat always keeps the judge's prompt, bon never does."""
    return row.get("model") == model_id and row.get("user_prompt", "") is None


def _forget_export(out_dir: Path, model_id: str) -> None:
    """Remove what an earlier export of ``model_id`` left: its answers and bon's ratings of it. Rows of other
    models and FastChat's own ratings stay; a judgment file left with no row goes."""
    (out_dir / "model_answer" / f"{model_id}.jsonl").unlink(missing_ok=True)
    for path in sorted((out_dir / "model_judgment").glob("*_single.jsonl")):
        rows = _rows(path)
        if rows is None or not any(_mine(row, model_id) for row in rows):
            continue
        kept = [row for row in rows if not _mine(row, model_id)]
        write_jsonl_atomic(path, kept) if kept else path.unlink()


def _kept_ratings(rd: RunDir, conv: Conversations, label: str | None) -> list[dict]:
    """FastChat judgment rows (``gen_judgment.py``'s single mode) for the kept answer of every turn; a turn
    without a rating (declined, skipped, or the judge failed) gets FastChat's score -1, which show_result drops."""
    check_name(str(label), "--ratings")
    mine = {j.key: j for j in rd.read(Judgement) if j.judge == label}
    if not mine:
        raise RunDirError(
            f"{rd.path}: no {label!r} judgements; rate the run first (`bon eval mt-bench {rd.path} --set ...`)"
        )
    out = []
    for p in conv.turns:
        s = conv.selected[p.id]
        j = None if s.chosen_index is None or s.declined else mine.get((p.id, s.chosen_index))
        score = -1 if j is None or j.score is None else j.score
        judge = [
            str((j.details or {}).get("judge_model", label)) if j else label,
            str((j.details or {}).get("judge_prompt", "")) if j else "",
        ]
        out.append(
            {
                "question_id": _question_id(p.conversation_id),
                "judge": judge,
                "user_prompt": None,  # not kept by bon: the judge's raw output is
                "judgment": j.raw if j else "",
                "score": score,
                "turn": p.turn,
                "tstamp": time.time(),
            }
        )
    return out


@dataclass(frozen=True)
class TurnPoint:
    turn: int
    k: int
    mean: float | None  # mean rating of the picks that have one
    ci_low: float | None
    ci_high: float | None
    rated: int
    unrated: int  # declined, or the scoring judge failed on the pick


@dataclass
class MTBenchReport:
    run_judge: str  # who picked
    score_judge: str  # who rated
    n: int
    questions: int
    by_turn: dict[int, float | None]  # show_result.py: mean rating of the kept answers per turn
    average: float | None  # and over both turns
    by_category: dict[str, float | None]
    points: list[TurnPoint] = field(default_factory=list)
    note: str | None = None
    png: Path | None = None
    markdown: Path | None = None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mt_bench_report(run_dir: Path, score_label: str = "mt_bench", rounds: int = 1000, seed: int = 0) -> MTBenchReport:
    """Mean ratings per turn and category of the run's kept answers, and the best-of-k curve per turn."""
    rd, _, config = load_run(run_dir)
    conv = read_conversations(rd, config)
    sampled = [p for p in conv.turns if not conv.selected[p.id].skipped]
    all_j = rd.read(Judgement)
    picker = judgements_of(rd, all_j, config.judge.name, sampled, config.n)
    rater = judgements_of(rd, all_j, score_label, sampled, config.n)
    other = secondary_judge(config.selection.tie_break)
    secondary = by_key(all_j, other) if other else None
    sel = config.selection

    def rating(p: Prompt, index: int | None) -> float | None:
        return None if index is None else rater[(p.id, index)].score

    kept = {p.id: rating(p, conv.selected[p.id].chosen_index) for p in sampled}
    by_turn: dict[int, list[float]] = defaultdict(list)
    by_category: dict[str, list[float]] = defaultdict(list)
    for p in sampled:
        if (r := kept[p.id]) is not None:
            by_turn[p.turn].append(r)
            by_category[p.category or "(none)"].append(r)
    points = []
    for turn in sorted({p.turn for p in sampled}):
        prompts = [p for p in sampled if p.turn == turn]
        for k in ks_for(config.n):
            made = select_all(
                [(p.id, [picker[(p.id, i)] for i in range(k)], char_lengths(conv.candidates[p.id])) for p in prompts],
                sel,
                secondary,
            )
            picks = [rating(p, s.chosen_index) for p, s in zip(prompts, made)]
            rated = [r for r in picks if r is not None]
            low, high = bootstrap(rated, rounds, seed, scale=1.0)
            points.append(TurnPoint(turn, k, _mean(rated), low, high, len(rated), len(picks) - len(rated)))
    note = (
        f"the same judge ({score_label}) picks and rates: the gain is optimistic"
        if score_label == config.judge.name
        else None
    )
    report = MTBenchReport(
        config.judge.name,
        score_label,
        config.n,
        len(conv.first),
        {t: _mean(v) for t, v in sorted(by_turn.items())},
        _mean([r for v in by_turn.values() for r in v]),
        {c: _mean(v) for c, v in sorted(by_category.items())},
        points,
        note,
    )
    out = rd.path / "mt_bench"
    out.mkdir(exist_ok=True)
    report.png, report.markdown = out / "gain.png", out / "mt_bench.md"
    _plot(report)
    report.markdown.write_text("\n".join(markdown_lines(report)) + "\n", encoding="utf-8")
    return report


def fmt_rating(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def gain_rows(report: MTBenchReport) -> list[tuple[str, ...]]:
    """(turn, k, mean rating, 95% CI, gain over k=1, rated, unrated) per point, as the table shows them."""
    base = {p.turn: p.mean for p in report.points if p.k == 1}
    rows: list[tuple[str, ...]] = []
    for p in report.points:
        gain = None if p.mean is None or base[p.turn] is None else p.mean - base[p.turn]  # type: ignore[operator]
        rows.append(
            (
                str(p.turn),
                str(p.k),
                fmt_rating(p.mean),
                ci_text(p.ci_low, p.ci_high, p.rated, 3),
                "—" if gain is None else f"{gain:+.3f}",
                str(p.rated),
                str(p.unrated),
            )
        )
    return rows


def markdown_lines(report: MTBenchReport) -> list[str]:
    lines = [
        f"# MT-Bench: picked by `{report.run_judge}`, rated by `{report.score_judge}`, N={report.n}, "
        f"{report.questions} questions",
        "",
        "| turn | mean rating (1-10) |",
        "|---|---|",
        *[f"| {t} | {fmt_rating(v)} |" for t, v in report.by_turn.items()],
        f"| average | {fmt_rating(report.average)} |",
        "",
        "| category | mean rating (both turns) |",
        "|---|---|",
        *[f"| {c} | {fmt_rating(v)} |" for c, v in report.by_category.items()],
        "",
        "| turn | k | mean rating | 95% CI | gain over k=1 | rated | unrated |",
        "|---|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in gain_rows(report)],
        "",
        "Turn 2's candidates follow turn 1's best-of-N answer; k varies the pick within the turn. Unrated: declined "
        "or the rating failed (left out, as show_result.py leaves out a rating of -1).",
    ]
    if report.note:
        lines += ["", f"**Note: {report.note}.**"]
    if report.png is not None:
        lines += ["", f"![gain]({report.png.name})"]
    return lines


def _plot(report: MTBenchReport) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for turn in sorted({p.turn for p in report.points}):
        curve = [p for p in report.points if p.turn == turn and p.mean is not None]
        ks = [p.k for p in curve]
        ax.plot(ks, [p.mean for p in curve], marker="o", label=f"turn {turn}")
        band = [p for p in curve if p.ci_low is not None and p.ci_high is not None]  # none under TOO_FEW ratings
        if band:
            ax.fill_between([p.k for p in band], [p.ci_low for p in band], [p.ci_high for p in band], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (candidates considered)")
    ax.set_ylabel(f"mean MT-Bench rating ({report.score_judge})")
    ax.set_title(f"Best-of-k on MT-Bench, picked by {report.run_judge}, {report.questions} questions", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    assert report.png is not None
    fig.savefig(report.png, dpi=120)
    plt.close(fig)
