"""AlpacaEval metrics through alpaca-eval itself, on the released annotations in ../shared/data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bon.core.io import DataFileError
from bon.eval.ae import full_winrate, leaderboard_row
from bon.eval.annotations import Annotation, read_annotations
from bon.eval.pool import evaluate_selector, load_pool, reference_points
from bon.judges import build_judge
from tests.helpers import bon, one_clear_line

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "alpaca_eval"
MODELS = [
    "alpaca-7b",
    "claude-2",
    "falcon-7b-instruct",
    "gpt-3.5-turbo-0301",
    "oasst-rlhf-llama-33b",
    "phi-2-sft",
    "vicuna-13b",
    "wizardlm-13b",
]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("model", MODELS)
def test_win_rate_reproduces_the_leaderboard(shared_data, version, model):
    result = full_winrate(
        read_annotations(shared_data / "alpaca_eval" / "annotations" / f"v{version}" / f"{model}.json"), lc=False
    )
    row = leaderboard_row(version, model)
    assert row is not None, f"{model} not on the v{version} leaderboard"
    assert result.win_rate == pytest.approx(row["win_rate"], abs=0.01)
    assert result.standard_error == pytest.approx(row["standard_error"], abs=0.01)
    assert result.discrete_win_rate == pytest.approx(row["discrete_win_rate"], abs=0.01)
    assert result.n_total == row["n_total"]


def test_length_controlled_reproduces_the_leaderboard(shared_data):
    from huggingface_hub import try_to_load_from_cache

    from bon.eval.ae import LC_FILE, LC_REPO, alpaca_eval

    cached = try_to_load_from_cache(
        LC_REPO, LC_FILE, cache_dir=alpaca_eval().constants.DEFAULT_CACHE_DIR, repo_type="dataset"
    )
    if not isinstance(cached, str):
        pytest.skip(f"{LC_FILE} of {LC_REPO} is not in the Hugging Face cache (the LC metric needs it)")
    result = full_winrate(read_annotations(shared_data / "alpaca_eval" / "annotations" / "v2" / "claude-2.json"))
    assert result.length_controlled_winrate == pytest.approx(
        leaderboard_row(2, "claude-2")["length_controlled_winrate"], abs=0.01
    )


def test_lc_offline_is_one_clear_line_and_the_rest_still_works(shared_data, tmp_path):
    result = full_winrate(
        read_annotations(shared_data / "alpaca_eval" / "annotations" / "v2" / "claude-2.json"),
        lc_data=tmp_path / "no.csv",
    )
    assert (
        result.length_controlled_winrate is None
        and "\n" not in result.lc_note
        and "no.csv does not exist" in result.lc_note
    )
    assert result.win_rate == pytest.approx(17.188, abs=0.01)


def test_winrate_cli_json_uses_alpaca_eval_key_names(shared_data):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bon",
            "eval",
            "winrate",
            str(shared_data / "alpaca_eval" / "annotations" / "v1" / "alpaca-7b.json"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate", "n_total"}
    assert data["win_rate"] == pytest.approx(26.46, abs=0.01) and data["n_total"] == 805


PUBLISHED = {  # ../shared/data/README.md: random pick, longest, best single, oracle (%)
    "v1": (802, {"random": 66.72, "longest": 74.81, "best_single": 91.33, "oracle": 98.75}),
    "v2": (805, {"random": 6.69, "longest": 9.62, "best_single": 17.19, "oracle": 23.73}),
}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pool_reference_points_match_the_data_readme(shared_data, version):
    pool = load_pool(shared_data / "alpaca_eval" / "annotations" / version)
    points, best = reference_points(pool)
    n, published = PUBLISHED[version]
    assert len(pool.instructions) == n and best == "claude-2"
    assert {k: round(v, 2) for k, v in points.items()} == published
    report, judgements = evaluate_selector(pool, build_judge("length"))
    assert report.win_rate == pytest.approx(points["longest"]) and len(judgements) == 8 * n


def test_select_pool_cli_json(shared_data, tmp_path):
    folder = str(shared_data / "alpaca_eval" / "annotations" / "v2")
    out = bon("eval", "select-pool", folder, "--judge", "random", "--limit", "50", "--json", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"judge", "n_instructions", "win_rate", "reference_points"} and data["n_instructions"] == 50
    assert data["win_rate_ci"][0] <= data["win_rate"] <= data["win_rate_ci"][1]
    assert set(data["lengths"]) == {"picks", "random", "longest", "baseline"}
    assert set(data["risk_at_coverage"]) == {"1", "0.9", "0.8", "0.5"} and "p_value" in data["vs_random"]
    assert set(data["reference_points"]) == {"random", "longest", "best_single", "oracle"}
    assert (
        "| random |" in (tmp_path / "select_pool.md").read_text()
        and (tmp_path / "select_pool.png").stat().st_size > 1000
    )


def annotation(pref, out2="b"):
    return Annotation("q", "a", "base", out2, "m", pref)


def test_pool_by_hand(tmp_path):
    # two models, three instructions: m1 wins q0 and draws q2; m2 wins q1; q3 lacks a preference
    rows = {
        "m1": [("q0", "long answer", 2), ("q1", "x", 1), ("q2", "yy", 0), ("q3", "z", None)],
        "m2": [("q0", "s", 1), ("q1", "longer one", 2), ("q2", "zzz", 1), ("q3", "w", 2)],
    }
    for m, items in rows.items():
        data = [
            {"instruction": q, "output_1": "base", "generator_1": "b", "output_2": o, "generator_2": m, "preference": p}
            for q, o, p in items
        ]
        (tmp_path / f"{m}.json").write_text(json.dumps(data))
    pool = load_pool(tmp_path)
    assert pool.instructions == ["q0", "q1", "q2"]
    points, best = reference_points(pool)
    # m1: 1 + 0 + 0.5 of 3; m2: 0 + 1 + 0 of 3
    assert points["random"] == pytest.approx(100 * ((1.5 / 3) + (1 / 3)) / 2)
    assert points["longest"] == pytest.approx(100 * (1 + 1 + 0) / 3)  # "long answer", "longer one", "zzz"
    assert points["oracle"] == pytest.approx(100 * (1 + 1 + 0.5) / 3) and best == "m1"


def test_bad_annotation_files_name_the_field(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps([{"instruction": "q", "output_1": "a", "output_2": "b", "preference": "maybe"}])
    )
    with pytest.raises(DataFileError, match=r"a\.json: row 0: field 'preference': expected a number"):
        read_annotations(tmp_path / "a.json")
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "output_1": "a", "preference": 1}]))
    with pytest.raises(DataFileError, match="field 'output_2'"):
        read_annotations(tmp_path / "a.json")
    assert annotation(0).win() == 0.5 and annotation(1.25).win() == 0.25 and annotation(None).win() is None


def _pool_files(folder, rows):
    for m, items in rows.items():
        data = [
            {"instruction": q, "output_1": "base", "generator_1": "b", "output_2": o, "generator_2": m, "preference": p}
            for q, o, p in items
        ]
        (folder / f"{m}.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "m1, says",
    [
        ([("q0", "a", 2), ("q1", "b", 1), ("q0", "a", 1)], r"m1\.json: row 2: instruction 'q0' is also row 0"),
        ([("q0", "a", 2), ("q1", "b", 1), ("q1", "c", 1)], r"m1\.json: row 2: instruction 'q1' is also row 1"),
    ],
)
def test_a_pool_file_listing_an_instruction_twice_differently_is_refused(tmp_path, m1, says):
    _pool_files(tmp_path, {"m1": m1, "m2": [("q0", "s", 1), ("q1", "t", 2)]})
    with pytest.raises(DataFileError, match=says + r", with another output or preference"):
        load_pool(tmp_path)


def test_an_identical_repeat_in_a_pool_file_counts_once(tmp_path):
    _pool_files(
        tmp_path, {"m1": [("q0", "a", 2), ("q1", "b", 1), ("q0", "a", 2)], "m2": [("q0", "s", 1), ("q1", "t", 2)]}
    )
    pool = load_pool(tmp_path)
    assert pool.instructions == ["q0", "q1"]
    points, _ = reference_points(pool)
    assert points["oracle"] == pytest.approx(100 * (1 + 1) / 2)


def test_length_sweep_moves_the_length_judges_picks_toward_the_pools_length_and_says_what_it_keeps(
    shared_data, tmp_path
):
    from bon.eval.pool import length_sweep, write_sweep

    pool = load_pool(shared_data / "alpaca_eval" / "annotations" / "v2")
    report, judgements = evaluate_selector(pool, build_judge("length"))
    sweep = length_sweep(pool, "length", judgements, [0, 0.5, 2])
    assert sweep[0].win_rate == report.win_rate and sweep[0].lengths["picks"] == report.lengths["picks"]
    assert sweep[0].lengths["picks"] > sweep[0].lengths["random"] > sweep[2].lengths["picks"]  # longest -> shortest
    assert sweep[0].vs_random.significant and sweep[0].vs_random.delta > 0  # longest beats a random pick on v2
    assert sweep[2].vs_random.delta < 0 and sweep[2].win_rate < sweep[0].win_rate
    assert (
        sweep[0].vs_length_matched.delta == 0 and not sweep[0].vs_length_matched.significant
    )  # length is all it knows
    md, png = write_sweep(sweep, tmp_path)
    assert "| 2 | " in md.read_text() and png.stat().st_size > 1000
    out = bon(
        "eval",
        "select-pool",
        str(shared_data / "alpaca_eval" / "annotations" / "v2"),
        "--judge",
        "length",
        "--length-penalty",
        "0,x",
    )
    one_clear_line(out, "option --length-penalty: 'x' is not a number")


def test_length_matched_pick_by_hand(pool_dir):
    from bon.eval.pool import length_matched

    pool = load_pool(pool_dir)  # b is longer everywhere; wins: a 1, 0, 0.5 and b 0, 1, 1
    assert pool.models == ["a", "b"]
    # picks a, a, b: length ranks 1, 1, 0, so a matched pick is the shorter one 2/3 of the time
    assert length_matched(pool, [0, 0, 1]) == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    assert length_matched(pool, [1, 1, 1]) == pytest.approx([0, 1, 1])  # always the longest: b itself


def test_select_pool_lc_beside_raw_or_one_line_why_not(shared_data, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    from bon.eval.ae import LC_FILE, LC_REPO, alpaca_eval

    folder = str(shared_data / "alpaca_eval" / "annotations" / "v2")
    out = bon("eval", "select-pool", folder, "--judge", "length", "--lc-data", str(tmp_path / "no.csv"), "--json")
    data = json.loads(out.stdout)
    assert data["lc_win_rate"] is None and "no.csv does not exist" in data["lc_note"]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    one_clear_line(
        bon("eval", "select-pool", folder, "--judge", "length", "--lc-data", str(tmp_path / "bad.csv")),
        "bad.csv:1: not AlpacaEval's df_gamed.csv",
    )
    cached = try_to_load_from_cache(
        LC_REPO, LC_FILE, cache_dir=alpaca_eval().constants.DEFAULT_CACHE_DIR, repo_type="dataset"
    )
    if not isinstance(cached, str):
        pytest.skip(f"{LC_FILE} of {LC_REPO} is not in the Hugging Face cache (the LC metric needs it)")
    data = json.loads(bon("eval", "select-pool", folder, "--judge", "length", "--lc-data", cached, "--json").stdout)
    assert data["lc_win_rate"] is not None and data["lc_win_rate"] < data["win_rate"]  # length-controlled: lower


@pytest.mark.slow
@pytest.mark.parametrize(
    ("judge", "options", "limit"), [("cosine", {"against": "instruction"}, 12), ("selfj", {"prompt_format": "chat"}, 2)]
)
def test_a_length_penalty_moves_real_judges_picks_toward_shorter_answers(shared_data, judge, options, limit):
    """MiniLM's cosine and SmolLM2's Self-J on released candidates: as λ grows the mean pick length never rises
    and ends at or below the pool's mean, and every row says what the picks keep of their win rate."""
    from bon.eval.pool import length_sweep

    pool = load_pool(shared_data / "alpaca_eval" / "annotations" / "v2", limit)
    _, judgements = evaluate_selector(pool, build_judge(judge, options), reference="none")
    sweep = length_sweep(pool, judge, judgements, [0, 0.5, 1, 4])
    lengths = [r.lengths["picks"] for r in sweep]
    assert lengths == sorted(lengths, reverse=True)  # the maximiser of score - λ length is never longer at larger λ
    assert lengths[-1] <= sweep[0].lengths["random"] and lengths[-1] < lengths[0]
    from bon.eval.metrics import TOO_FEW

    assert all(r.vs_random is not None and (r.win_rate_ci is not None) == (limit >= TOO_FEW) for r in sweep)
