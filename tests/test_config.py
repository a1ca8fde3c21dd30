import re
from pathlib import Path

import pytest

from bon.core.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_load():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.n == 8 and demo.policy.backend == "transformers" and demo.judge.name == "selfj"
    headline = load_config(ROOT / "configs" / "alpaca_eval_v2_bo32.yaml")
    assert headline.n == 32 and headline.policy.backend == "vllm"
    assert headline.judge.options["model"] == "oceanpty/Self-J"


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["n=2", "policy.temperature=0.5", "selection.decline_below=3"])
    assert cfg.n == 2 and cfg.policy.temperature == 0.5 and cfg.selection.decline_below == 3.0


def test_compare_config_ships_and_overrides_index_lists():
    from bon.eval.compare import CompareConfig

    cfg = load_config(
        ROOT / "configs" / "compare_cpu.yaml", ["judges.4.max_items.autoj_dev=10", "bootstrap=0"], model=CompareConfig
    )
    assert [j.key for j in cfg.judges] == ["length", "random", "cosine_ref", "cosine_q", "selfj"]
    assert cfg.judges[4].limit("autoj_dev") == 10 and cfg.judges[0].limit("autoj_dev") is None
    with pytest.raises(ConfigError, match="'9' is not an index of that list"):
        load_config(ROOT / "configs" / "compare_cpu.yaml", ["judges.9.name=length"], model=CompareConfig)


def test_compare_config_errors_name_file_line_and_key(tmp_path):
    from bon.eval.compare import CompareConfig

    path = tmp_path / "c.yaml"
    path.write_text("judges:\n  - {name: length}\nbenchmarks:\n  - {name: b, kind: pairs, path: x}\n")
    with pytest.raises(
        ConfigError,
        match=r"c\.yaml:4: benchmarks\.0\.kind: Input should be 'pairwise', 'pool', 'scores' or 'leaderboard'",
    ):
        load_config(path, model=CompareConfig)


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n: 2\npolicy:\n  temprature: 0.3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: policy\.temprature: unknown key"):
        load_config(path)


def test_bad_value_names_key_and_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nn: 0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: n: Input should be greater than or equal to 1 \(got 0\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"policy\.top_p: .*\(got 2\)"):
        load_config(None, ["policy.top_p=2"])


def test_unknown_judge_suggests(tmp_path):
    with pytest.raises(
        ConfigError, match=r"judge\.name: unknown judge 'selfjj'\. Did you mean 'selfj' or 'self_eval'\?"
    ):
        load_config(None, ["judge.name=selfjj"])


def test_judge_options_validated_by_the_judge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("judge:\n  name: selfj\n  options:\n    prompt_fromat: chat\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:1: judge: options\.prompt_fromat: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"options\.prompt_format: .*got 'xml'"):
        load_config(None, ["judge.options.prompt_format=xml"])


def test_bad_yaml_and_bad_set():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["n"])


def test_generator_name():
    assert RunConfig().generator_name() == "SmolLM2-135M-Instruct-bo8-selfj"
    assert RunConfig(name="mine").generator_name() == "mine"


def test_decode_rows_must_hold_one_prompt():
    with pytest.raises(ConfigError, match="policy.max_rows 4 cannot hold one prompt's n=8 rows"):
        load_config(None, ["n=8", "policy.max_rows=4"])
    assert load_config(None, ["n=8", "policy.max_rows=8"]).policy.max_rows == 8


@pytest.mark.parametrize(
    "text, line, key, first",
    [
        ("n: 4\nseed: 1\nn: 5\n", 3, "n", 1),
        ("n: 4\npolicy:\n  max_tokens: 8\n  temperature: 0.5\n  max_tokens: 9\n", 5, "policy.max_tokens", 3),
        ("judge:\n  name: length\n  options: {}\n  options: {x: 1}\n", 4, "judge.options", 3),
        ("n: 4\nn: 4\n", 2, "n", 1),  # the same value twice is still two statements of one key
    ],
)
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, text, line, key, first):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:{line}: key {key} is given twice (lines {first} and {line}); keep one"


def test_equal_keys_in_different_mappings_are_not_duplicates(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("policy:\n  max_tokens: 8\njudge:\n  name: autoj\n  options:\n    max_tokens: 4\n")
    assert load_config(path).policy.max_tokens == 8


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n", "~\n"])
def test_an_empty_config_file_is_refused_not_read_as_the_defaults(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"c\.yaml: the config is empty; a config is a mapping of keys"):
        load_config(path)


@pytest.mark.parametrize("text", ["- 1\n", "7\n", "'n: 8'\n"])
def test_a_config_that_is_not_a_mapping_is_refused(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"c\.yaml: a config is a mapping of keys, found"):
        load_config(path)


@pytest.mark.parametrize(
    "assignment, says",
    [
        ("policy.temprature=1", "policy.temprature: unknown key; did you mean 'temperature'?"),
        ("policy.server.timout_s=3", "policy.server.timout_s: unknown key; did you mean 'timeout_s'?"),
        ("judges=1", "judges: unknown key; did you mean 'judge'?"),
        ("zzz=1", "zzz: unknown key; known keys here: name, output_dir, n, seed, batch_size,"),
        ("judge.options.prompt_fromat=chat", "options.prompt_fromat: unknown key; did you mean 'prompt_format'?"),
        ("judge.options.zzz=1", "options.zzz: unknown key; known keys here: backend, model,"),
        ("judge.options={zzz: 1, name: 2}", "options.zzz: unknown key; known keys here: backend, model,"),
    ],
)
def test_an_unknown_key_names_the_close_keys_or_the_known_ones(assignment, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config("configs/demo.yaml", [assignment])


@pytest.mark.parametrize(
    "sets, says",
    [
        (["n=four"], "--set n=four: n: Input should be a valid integer"),
        (["n=4", "n=four"], "--set n=four: n: Input should be a valid integer"),
        (["judge.options.zzz=1"], "--set judge.options.zzz=1: judge: options.zzz: unknown key"),
        (["policy={temperature: -1}"], "--set policy={temperature: -1}: policy.temperature: Input should be greater"),
        (["judge.options.batch_size=4", "policy.top_p=2"], "--set policy.top_p=2: policy.top_p: Input should be less"),
    ],
)
def test_a_bad_value_from_set_is_blamed_on_the_set_not_the_file(sets, says):
    with pytest.raises(ConfigError, match="^" + re.escape(says)):
        load_config("configs/demo.yaml", sets)


def test_a_bad_value_in_the_file_keeps_its_line_beside_unrelated_sets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n: 8\npolicy:\n  top_p: 2\n")
    with pytest.raises(ConfigError, match=r"^.*c\.yaml:3: policy\.top_p: Input should be less"):
        load_config(path, ["n=4", "policy.temperature=0.5"])


def test_switching_the_judge_drops_the_old_judges_options_and_says_so():
    notes: list[str] = []
    cfg = load_config("configs/demo.yaml", ["judge.name=length"], notes=notes)
    assert (cfg.judge.name, cfg.judge.options) == ("length", {})
    assert notes == [
        "--set judge.name=length: judge.options of selfj (backend, model, prompt_format, reference) dropped; "
        "set options for length after it, e.g. --set judge.options.KEY=VALUE"
    ]
    cfg = load_config("configs/demo.yaml", ["judge.name=random", "judge.options.seed=3"], notes=[])
    assert cfg.judge.options == {"seed": 3}  # options set after the name apply to the new judge
    kept: list[str] = []
    assert load_config("configs/demo.yaml", ["judge.name=selfj"], notes=kept).judge.options["prompt_format"] == "chat"
    assert kept == []  # the same judge keeps its options


def test_an_option_of_a_judge_without_options_says_nothing_can_be_set():
    with pytest.raises(ConfigError) as e:
        load_config("configs/demo.yaml", ["judge.name=length", "judge.options.zzz=1"], notes=[])
    assert str(e.value) == "--set judge.options.zzz=1: judge: options.zzz: unknown key; nothing can be set here"
