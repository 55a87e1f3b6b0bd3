"""The `conveyor` command line as a parser: verb groups, deprecated aliases, help, --version."""

from __future__ import annotations

import argparse

import pytest

import conveyor
from conveyor.cli.main import build_parser, main


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("conveyor",)):
    """Every (command path, parser) below ``parser``, itself included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def test_every_positional_argument_has_help():
    missing, seen = [], 0
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            if not action.option_strings:  # a positional (verbs included)
                seen += 1
                if not (action.help and action.help.strip()) or action.help == argparse.SUPPRESS:
                    missing.append(f"{' '.join(path)}: {action.dest}")
    assert seen > 20, "the walk reached the verbs' own parsers"
    assert missing == []


def test_verb_groups_and_their_deprecated_aliases_parse_alike():
    parse = build_parser().parse_args
    new = parse(["rollout", "start", "s.yaml", "--version", "3", "--watch"])
    old = parse(["rollout", "s.yaml", "--version", "3", "--watch"])
    assert (new.func.__name__, new.spec, new.version, new.watch) == ("cmd_rollout", "s.yaml", 3, True)
    assert (old.func, old.spec, old.version, old.watch) == (new.func, new.spec, new.version, new.watch)
    assert new.deprecated_alias is None
    assert old.deprecated_alias == ("rollout SPEC", "rollout start SPEC")
    # options before the spec, as the old verb allowed
    opt_first = parse(["rollout", "--workspace", "w", "s.yaml", "--version", "2"])
    assert (opt_first.func.__name__, opt_first.workspace, opt_first.spec) == ("cmd_rollout", "w", "s.yaml")

    st_new, st_old = parse(["rollout", "status", "s.yaml", "--json"]), parse(["rollout-status", "s.yaml", "--json"])
    assert (st_new.func.__name__, st_new.spec, st_new.json) == ("cmd_rollout_status", "s.yaml", True)
    assert (st_old.func, st_old.spec, st_old.json) == (st_new.func, st_new.spec, st_new.json)
    assert (st_new.deprecated_alias, st_old.deprecated_alias) == (None, ("rollout-status", "rollout status"))

    wh_new = parse(["webhook", "serve", "a.yaml", "b.yaml", "--port", "9000"])
    wh_old = parse(["webhook", "a.yaml", "b.yaml", "--port", "9000"])
    assert (wh_new.func.__name__, wh_new.spec, wh_new.port) == ("cmd_webhook", ["a.yaml", "b.yaml"], 9000)
    assert (wh_old.func, wh_old.spec, wh_old.port) == (wh_new.func, wh_new.spec, wh_new.port)
    assert wh_old.deprecated_alias == ("webhook SPEC", "webhook serve SPEC")

    send_new = parse(["webhook", "send", "http://h/hooks/x", "--reason", "r"])
    send_old = parse(["webhook-send", "http://h/hooks/x", "--reason", "r"])
    assert (send_new.func.__name__, send_new.url, send_new.reason) == ("cmd_webhook_send", "http://h/hooks/x", "r")
    assert (send_old.func, send_old.url, send_old.reason) == (send_new.func, send_new.url, send_new.reason)
    assert send_old.deprecated_alias == ("webhook-send", "webhook send")

    # a spec whose file name is another verb's group word is still a spec
    assert parse(["validate", "rollout"]).spec == "rollout"


def test_deprecated_aliases_say_so_in_their_help(capsys):
    for argv in (["--help"], ["rollout", "--help"], ["webhook", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for old, new in (("rollout-status", "rollout status"), ("webhook-send", "webhook send"),
                     ("rollout SPEC --version N", "rollout start"), ("webhook SPEC...", "webhook serve")):
        assert f"{old}` is a deprecated alias of `{new}`" in text or f"{old} deprecated alias of `{new}`" in text, old


def test_a_deprecated_alias_warns_on_stderr_and_runs(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\ntask: classification\ndata:\n  source: d\n")
    assert main(["rollout-status", str(spec)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "x: no rollout yet (deploy.strategy replace)\n"
    assert "`conveyor rollout-status` is a deprecated alias of `conveyor rollout status`" in captured.err
    assert main(["rollout", "status", str(spec)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "x: no rollout yet (deploy.strategy replace)\n" and captured.err == ""


def test_version(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out == f"conveyor {version('conveyor')}\n"

    import importlib.metadata

    from conveyor.cli import parser

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert parser.package_version() == conveyor.__version__
