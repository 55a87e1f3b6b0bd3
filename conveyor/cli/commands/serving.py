"""Verbs that serve over HTTP or talk to a server: webhook serve, webhook send, serve."""

from __future__ import annotations

import argparse

from conveyor.cli.common import load, prepare_env, start_api


def cmd_webhook(args: argparse.Namespace) -> int:
    """`conveyor webhook serve`: the signed webhook that starts pipeline runs."""
    from conveyor.monitoring.webhook import WebhookConfig, serve
    from conveyor.orchestration import prefect_api

    specs = [load(p) for p in args.spec]
    config = WebhookConfig.from_env(mode=args.mode, rate_per_minute=args.rate_per_minute, burst=args.burst)
    prepare_env(specs[0].workspace_path(args.workspace))
    starter = prefect_api.starter_for(config)
    if any(s.triggers.webhook for s in specs):  # else serve refuses, and nothing is started for it
        start_api()
    serve(specs, host=args.host, port=args.port, config=config, starter=starter)
    return 0


def cmd_webhook_send(args: argparse.Namespace) -> int:
    """`conveyor webhook send`: a signed request to a conveyor webhook."""
    from conveyor.monitoring.webhook import send

    res = send(args.url, reason=args.reason, timeout=args.timeout)
    print(f"HTTP {res.status_code}")
    print(res.text)
    return 0 if res.is_success else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from conveyor.serving.http import serve
    from conveyor.serving.service import ServiceConfig

    spec = load(args.spec)
    config = ServiceConfig(threads=args.threads, poll_s=args.poll)
    serve(spec, spec.workspace_path(args.workspace), host=args.host, port=args.port, config=config)
    return 0
