"""The command line a newcomer reads: every option explained, no markup in the help, defaults
from the schema only, check-config in the format users write, each command beside its arguments."""

from __future__ import annotations

import argparse
import ast
import inspect

import pytest
import yaml

from dmflow.cli import build_parser, main, rules, tools
from dmflow.config import load_config
from dmflow.core.schema import defaults

from helpers import REPO, dmflow_cli

CLI = REPO / "src" / "dmflow" / "cli"
NAMES = (  # every command the rules, tests and users call: none may go
    "check-config config-docs prepare-data synthetic-cifar10 make-masks train-chunk collect moments fit-block "
    "merge-fit evaluate score-attribution baseline-scores compare-methods import-store export learning-curve "
    "counterfactual-design counterfactual-analyse influencers leakage embeddings summary"
).split()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    commands = _subparsers(parser)
    assert len(commands) == len(rules.COMMANDS) + len(tools.COMMANDS)
    assert set(commands) >= set(NAMES)
    missing = [
        f"{name}: {'/'.join(action.option_strings) or action.dest}"
        for name, p in [("dmflow", parser), *commands.items()]
        for action in p._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert not missing, "\n".join(missing)
    assert all(c.help.strip() for c in [*rules.COMMANDS, *tools.COMMANDS])


def test_the_help_renders_without_raw_markup(capsys):
    parser = build_parser()
    texts = [parser.format_help(), *(p.format_help() for p in _subparsers(parser).values())]
    for text in texts:
        for markup in ("``", "`", "**", ":func:", ":class:"):
            assert markup not in text, f"{markup!r} in:\n{text}"
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "check-config" in capsys.readouterr().out


def test_each_rule_has_its_command_and_the_rule_commands_are_apart_from_the_users():
    rule_names = {c.name for c in rules.COMMANDS}
    tool_names = {c.name for c in tools.COMMANDS}
    assert not rule_names & tool_names
    called = set()
    for smk in (REPO / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if line.startswith("rule "):
                called.add(line.split()[1].rstrip(":").replace("_", "-"))
    assert called == rule_names
    assert {"check-config", "config-docs", "score-attribution", "import-store", "export"} <= tool_names


def test_each_command_function_sits_beside_its_arguments():
    """The decorator that declares a command's arguments is the line above its function."""
    for module in (rules, tools):
        for c in module.COMMANDS:
            lines, start = inspect.getsourcelines(c.run)
            assert lines[0].lstrip().startswith("@COMMANDS.command("), c.name
            assert c.run.__name__ == c.name.replace("-", "_"), c.name


def _literal_defaults(path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "arg",
            "add_argument",
        ):
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant) and kw.value.value is not None:
                    found.append(f"{path.name}:{kw.lineno} default={kw.value.value!r}")
    return found


def test_no_default_is_written_in_the_cli_the_schema_holds_them():
    assert not [f for p in sorted(CLI.glob("*.py")) for f in _literal_defaults(p)]
    # the check sees a literal default where there is one
    probe = REPO / "benchmarks" / "train_throughput.py"
    assert _literal_defaults(probe)
    commands = _subparsers(build_parser())
    seeded = {name: p.get_default("seed") for name, p in commands.items() if "--seed" in p._option_string_actions}
    assert set(seeded.values()) == {defaults()["seed"]} and len(seeded) >= 8
    for name in ("collect", "import-store"):
        assert commands[name].get_default("max_diverged_fraction") == defaults("train")["max_diverged_fraction"]
    analysis = defaults("analysis")
    assert commands["influencers"].get_default("top_k") == analysis["top_k"]
    assert commands["leakage"].get_default("pairs") == analysis["leakage_pairs"]
    assert commands["embeddings"].get_default("ends") == analysis["component_ends"]
    assert commands["baseline-scores"].get_default("threads") == defaults("baselines")["threads"]


@pytest.mark.parametrize("given", ["seed: 5\nmasks:\n  alphas: [0.25, 0.5]\nfit:\n  tol: 1.0e-7\n", "{}\n"])
def test_check_config_prints_yaml_that_load_config_reads_back_to_the_same_config(tmp_path, given):
    path = tmp_path / "mine.yaml"
    path.write_text(given)
    printed = dmflow_cli("check-config", path).stdout
    assert not printed.lstrip().startswith("{")  # YAML blocks, the format users write, not JSON
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert load_config(again) == load_config(path)
    assert yaml.safe_load(printed) == load_config(path)
    assert printed.splitlines()[0].startswith("results:")  # the schema's order, not sorted keys


def test_a_bad_json_section_is_one_line_naming_the_option(tmp_path):
    proc = dmflow_cli("prepare-data", "--dataset", "{name: digits", "--out", tmp_path / "d.npz", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "argument --dataset: not JSON" in last and "Traceback" not in proc.stderr


def test_usage_records_a_succeeding_commands_resources_in_snakemakes_benchmark_columns(tmp_path):
    """The heavy rules pass --usage: a one-row TSV that summary.md reads as it reads `benchmark:` files;
    a command that fails writes none."""
    import pandas as pd

    ok, failed = tmp_path / "ok" / "job.tsv", tmp_path / "failed.tsv"
    dmflow_cli("--usage", ok, "config-docs")
    row = pd.read_csv(ok, sep="\t")
    assert list(row.columns) == ["s", "max_rss", "cpu_time"] and len(row) == 1
    assert row.s[0] > 0 and 10 < row.max_rss[0] < 10_000 and row.cpu_time[0] > 0
    proc = dmflow_cli("--usage", failed, "check-config", tmp_path / "missing.yaml", check=False)
    assert proc.returncode != 0 and not failed.exists()
