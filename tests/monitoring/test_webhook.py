"""The signed webhook receiver: authentication, limits, parsing and starting, without a Prefect server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from conveyor.monitoring import webhook
from conveyor.orchestration import prefect_api
from conveyor.cli.main import build_parser, main
from conveyor.core.spec import spec_from_dict
from conveyor.monitoring.webhook import (
    SECRET_ENV,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    StartError,
    StartRequest,
    WebhookConfig,
    WebhookConfigError,
    create_app,
    sign,
    verify,
)

from helpers.specs import toy_spec_dict, write_pipeline_spec

SECRET = "s3cret-for-tests-0123456789"
NOW = 1_760_000_000


class Clock:
    def __init__(self, t: float = NOW):
        self.t = float(t)

    def __call__(self) -> float:
        return self.t


class FakeStarter:
    def __init__(self, error: Exception | None = None):
        self.calls: list[StartRequest] = []
        self.error = error

    def __call__(self, req: StartRequest) -> str:
        if self.error is not None:
            raise self.error
        self.calls.append(req)
        return f"run-{len(self.calls)}"


def make_specs(tmp_path: Path):
    on = spec_from_dict(toy_spec_dict(name="toy", triggers={"webhook": True}), base_dir=tmp_path)
    other = spec_from_dict(toy_spec_dict(name="other", triggers={"webhook": True}), base_dir=tmp_path)
    off = spec_from_dict(toy_spec_dict(name="quiet"), base_dir=tmp_path)
    assert off.triggers.webhook is False
    return [on, other, off]


@pytest.fixture
def setup(tmp_path):
    """An app with a fake starter and a fake clock; returns (client, starter, clock)."""

    def build(starter=None, **settings):
        clock = Clock()
        starter = FakeStarter() if starter is None else starter
        app = create_app(make_specs(tmp_path), WebhookConfig(secret=SECRET, **settings), starter=starter, clock=clock)
        return TestClient(app), starter, clock

    return build


def post(client, pipeline="toy", payload=None, *, body: bytes | None = None, secret=SECRET, ts: int | None = NOW,
         headers: dict | None = None, signed=True):
    if body is None:
        body = json.dumps({"reason": "new batch"} if payload is None else payload).encode()
    h = {"Content-Type": "application/json"}
    if signed:
        h.update(sign(body, secret, ts))
    h.update(headers or {})
    return client.post(f"/hooks/{pipeline}", content=body, headers=h)


# ---- signing --------------------------------------------------------------------------------


def test_sign_follows_the_documented_scheme():
    body = b'{"reason": "x"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(body, SECRET, 1_700_000_000) == {TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: f"sha256={expected}"}
    v = verify(body, sign(body, SECRET, 1_700_000_000), SECRET, now=1_700_000_010)
    assert v.timestamp == 1_700_000_000 and v.signature == expected
    with pytest.raises(SignatureError, match="does not match"):
        verify(body + b" ", sign(body, SECRET, 1_700_000_000), SECRET, now=1_700_000_010)


# ---- accepted -------------------------------------------------------------------------------


def test_valid_signed_request_starts_exactly_one_run(setup, caplog):
    client, starter, _ = setup()
    with caplog.at_level(logging.INFO, logger="conveyor.monitoring.webhook"):
        res = post(client, payload={"pipeline": "toy", "reason": "new batch from cam-07"})
    assert res.status_code == 202, res.text
    assert res.json() == {"pipeline": "toy", "deployment": "conveyor-cycle/toy", "flow_run_id": "run-1",
                          "mode": "deployment"}
    assert len(starter.calls) == 1
    req = starter.calls[0]
    assert (req.pipeline, req.deployment, req.trigger, req.reason) == ("toy", "conveyor-cycle/toy", "webhook",
                                                                        "new batch from cam-07")
    assert req.parameters == {"trigger": "webhook", "reason": "new batch from cam-07"}
    assert any("accepted 202" in r.getMessage() and "'toy'" in r.getMessage() for r in caplog.records)


def test_reason_is_optional(setup):
    client, starter, _ = setup()
    assert post(client, payload={}).status_code == 202
    assert starter.calls[0].reason is None


def test_event_mode_reports_the_event_id(setup):
    client, starter, _ = setup(mode="event")
    res = post(client)
    assert res.status_code == 202
    assert res.json() == {"pipeline": "toy", "deployment": "conveyor-cycle/toy", "event_id": "run-1", "mode": "event"}


def test_healthz_lists_the_pipelines_that_accept_webhooks(setup):
    client, _, _ = setup()
    res = client.get("/healthz")
    assert res.status_code == 200
    assert res.json() == {"status": "ok", "mode": "deployment", "pipelines": ["other", "toy"]}


# ---- authentication -------------------------------------------------------------------------


def test_unsigned_request_is_401_and_starts_nothing(setup):
    client, starter, _ = setup()
    res = post(client, signed=False)
    assert res.status_code == 401 and "X-Conveyor-Signature" in res.json()["detail"]
    body = b'{"reason": "x"}'
    only_sig = {SIGNATURE_HEADER: sign(body, SECRET, NOW)[SIGNATURE_HEADER]}
    assert post(client, body=body, signed=False, headers=only_sig).status_code == 401
    assert starter.calls == []


@pytest.mark.parametrize("ts", ["abc", "1.7e9", "-5", "", "1_760_000_000"])
def test_malformed_timestamp_is_401(setup, ts):
    client, starter, _ = setup()
    body = b'{"reason": "x"}'
    headers = {SIGNATURE_HEADER: sign(body, SECRET, NOW)[SIGNATURE_HEADER], TIMESTAMP_HEADER: ts}
    res = post(client, body=body, signed=False, headers=headers)
    assert res.status_code == 401 and TIMESTAMP_HEADER in res.json()["detail"]
    assert starter.calls == []


@pytest.mark.parametrize("sig", ["sha256=xyz", "md5=" + "0" * 64, "0" * 64, "sha256=" + "0" * 64])
def test_malformed_or_wrong_signature_is_401(setup, sig):
    client, starter, _ = setup()
    res = post(client, headers={SIGNATURE_HEADER: sig})
    assert res.status_code == 401
    assert starter.calls == []


def test_wrong_secret_or_tampered_body_is_401(setup):
    client, starter, _ = setup()
    assert post(client, secret="another-secret-of-enough-length").status_code == 401
    body = b'{"reason": "x"}'
    tampered = post(client, body=b'{"reason": "y"}', signed=False, headers=sign(body, SECRET, NOW))
    assert tampered.status_code == 401 and "does not match" in tampered.json()["detail"]
    assert starter.calls == []


@pytest.mark.parametrize("offset,status", [(-301, 401), (301, 401), (-299, 202), (299, 202)])
def test_timestamp_outside_the_window_is_401(setup, offset, status):
    client, starter, _ = setup()
    res = post(client, ts=NOW + offset)
    assert res.status_code == status, res.text
    assert len(starter.calls) == (1 if status == 202 else 0)


def test_replayed_request_is_401(setup):
    client, starter, clock = setup()
    body = b'{"reason": "x"}'
    headers = sign(body, SECRET, NOW)
    assert post(client, body=body, signed=False, headers=headers).status_code == 202
    clock.t += 30
    again = post(client, body=body, signed=False, headers=headers)
    assert again.status_code == 401 and "replayed" in again.json()["detail"]
    assert len(starter.calls) == 1
    # the same body signed again (a new timestamp) is a new request
    assert post(client, body=body, ts=NOW + 31).status_code == 202


def test_signature_is_checked_before_the_body_is_parsed(setup):
    client, starter, _ = setup()
    res = post(client, body=b"not json", signed=False, headers=sign(b"something else", SECRET, NOW))
    assert res.status_code == 401
    assert starter.calls == []


# ---- body -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body,field", [
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    (b'"reason"', "body"),
    (b"\xff\xfe", "body"),
    (b"", "body"),
    (b'{"reason": 5}', "reason"),
    (b'{"reason": null, "colour": "red"}', "colour"),
    (json.dumps({"reason": "x" * 501}).encode(), "reason"),
    (b'{"reason": "a", "reason": "b"}', "reason"),
    (b'{"reason": "line\\u0000break"}', "reason"),
    (b'{"pipeline": "other"}', "pipeline"),
])
def test_malformed_body_is_400_naming_the_field(setup, body, field):
    client, starter, _ = setup()
    res = post(client, body=body)
    assert res.status_code == 400, res.text
    assert res.json()["detail"].startswith(f"{field}:")
    assert starter.calls == []


def test_reason_of_500_characters_is_accepted(setup):
    client, starter, _ = setup()
    assert post(client, payload={"reason": "x" * 500}).status_code == 202
    assert len(starter.calls[0].reason) == 500


# ---- size -----------------------------------------------------------------------------------


def test_default_body_limit_is_64_kib(setup):
    client, starter, _ = setup()
    assert WebhookConfig(secret=SECRET).max_body == 64 * 1024
    big = json.dumps({"reason": "x" * (64 * 1024)}).encode()
    res = post(client, body=big)
    assert res.status_code == 413
    padded = b'{"reason": "x"}' + b" " * (64 * 1024 - 15)  # exactly at the limit
    assert len(padded) == 64 * 1024
    assert post(client, body=padded).status_code == 202
    assert len(starter.calls) == 1


def test_oversized_body_is_413_when_content_length_lies_or_is_absent(setup):
    client, starter, _ = setup(max_body=1024)
    body = json.dumps({"reason": "x" * 2000}).encode()
    lying = post(client, body=body, headers={"Content-Length": "10"})
    assert lying.status_code == 413

    def chunks():
        for _ in range(4):
            yield body[:600]

    chunked = client.post("/hooks/toy", content=chunks(), headers=sign(b"".join(chunks()), SECRET, NOW))
    assert chunked.status_code == 413
    assert starter.calls == []


def test_body_reading_stops_past_the_limit(tmp_path):
    """An endless chunked body: the receiver answers 413 after reading just past the limit."""
    app = create_app(make_specs(tmp_path), WebhookConfig(secret=SECRET, max_body=4096), starter=FakeStarter(),
                     clock=Clock())
    consumed = 0
    sent: list[dict] = []

    async def receive():
        nonlocal consumed
        consumed += 1
        if consumed > 1000:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/hooks/toy", "raw_path": b"/hooks/toy", "query_string": b"",
             "root_path": "", "headers": [(b"transfer-encoding", b"chunked")],
             "client": ("10.0.0.1", 1234), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert consumed <= 6


# ---- pipelines ------------------------------------------------------------------------------


def test_unknown_or_disabled_pipeline_is_404(setup):
    client, starter, _ = setup()
    unknown = post(client, "nope", payload={"reason": "x"})
    assert unknown.status_code == 404 and "unknown pipeline 'nope'" in unknown.json()["detail"]
    disabled = post(client, "quiet", payload={"reason": "x"}, ts=NOW + 1)
    assert disabled.status_code == 404 and "triggers.webhook" in disabled.json()["detail"]
    assert starter.calls == []


def test_unsigned_request_to_unknown_pipeline_is_401_not_404(setup):
    client, _, _ = setup()
    assert post(client, "nope", signed=False).status_code == 401


# ---- rate limits ----------------------------------------------------------------------------


def test_rate_limit_per_pipeline_429_after_the_burst(setup):
    client, starter, clock = setup(rate_per_minute=6, burst=3)
    codes = [post(client, payload={"reason": f"r{i}"}, ts=NOW + i).status_code for i in range(4)]
    assert codes == [202, 202, 202, 429]
    limited = post(client, payload={"reason": "again"}, ts=NOW + 10)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert len(starter.calls) == 3
    assert post(client, "other", ts=NOW + 11).status_code == 202  # each pipeline has its own bucket
    clock.t += 10  # 6 per minute: one token every 10 s
    assert post(client, payload={"reason": "later"}, ts=NOW + 12).status_code == 202
    assert len(starter.calls) == 5


def test_unauthenticated_flood_does_not_use_up_the_budget(setup):
    client, starter, _ = setup(rate_per_minute=6, burst=1, ip_failures_per_minute=0)
    for _ in range(20):
        assert post(client, signed=False).status_code == 401
        assert post(client, secret="wrong-secret-wrong-secret").status_code == 401
    assert post(client).status_code == 202
    assert len(starter.calls) == 1


def test_repeated_auth_failures_from_one_client_are_throttled_but_signed_requests_pass(setup):
    client, starter, _ = setup(ip_failures_per_minute=5)
    codes = [post(client, signed=False).status_code for _ in range(7)]
    assert codes == [401] * 5 + [429] * 2
    assert post(client).status_code == 202
    assert len(starter.calls) == 1


# ---- starting -------------------------------------------------------------------------------


def test_starter_failure_is_503_or_502_without_a_traceback(setup, caplog):
    client, _, _ = setup(starter=FakeStarter(StartError("Prefect API unreachable", status=503)))
    res = post(client)
    assert res.status_code == 503 and "Prefect API unreachable" in res.json()["detail"]
    assert "Retry-After" in res.headers

    client, _, _ = setup(starter=FakeStarter(RuntimeError("boom")))
    with caplog.at_level(logging.ERROR, logger="conveyor.monitoring.webhook"):
        res = post(client)
    assert res.status_code == 502 and "RuntimeError" in res.json()["detail"]
    assert "Traceback" not in res.text
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_deployment_starter_calls_run_deployment_and_maps_errors(monkeypatch):
    import prefect.deployments
    from prefect.exceptions import ObjectNotFound

    calls = []

    class Run:
        id = "6b1e0c1e-0000-0000-0000-000000000001"

    def fake_run_deployment(**kwargs):
        calls.append(kwargs)
        return Run()

    monkeypatch.setattr(prefect.deployments, "run_deployment", fake_run_deployment)
    req = StartRequest(pipeline="toy", deployment="conveyor-cycle/toy", reason="why", request_id="ab" * 16,
                       client="c")
    assert prefect_api.deployment_starter()(req) == Run.id
    (kw,) = calls
    assert kw["name"] == "conveyor-cycle/toy" and kw["timeout"] == 0
    assert kw["parameters"] == {"trigger": "webhook", "reason": "why"}

    def not_found(**kwargs):
        raise ObjectNotFound(http_exc=Exception("404"))

    monkeypatch.setattr(prefect.deployments, "run_deployment", not_found)
    with pytest.raises(StartError, match="not found") as err:
        prefect_api.deployment_starter()(req)
    assert err.value.status == 502

    def unreachable(**kwargs):
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(prefect.deployments, "run_deployment", unreachable)
    with pytest.raises(StartError, match="unreachable") as err:
        prefect_api.deployment_starter()(req)
    assert err.value.status == 503


def test_event_starter_emits_the_event(monkeypatch):
    import prefect.events

    emitted = []

    class Event:
        id = "ev-1"

    def fake_emit(**kwargs):
        emitted.append(kwargs)
        return Event()

    monkeypatch.setattr(prefect.events, "emit_event", fake_emit)
    req = StartRequest(pipeline="toy", deployment="conveyor-cycle/toy", reason="why", request_id="r", client="c")
    assert prefect_api.event_starter()(req) == "ev-1"
    (kw,) = emitted
    assert kw["event"] == "conveyor.webhook.received"
    assert kw["resource"] == {"prefect.resource.id": "conveyor.pipeline.toy", "prefect.resource.name": "toy"}
    assert kw["payload"]["reason"] == "why"
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: None)
    with pytest.raises(StartError) as err:
        prefect_api.event_starter()(req)
    assert err.value.status == 503


# ---- logging --------------------------------------------------------------------------------


def test_rejections_are_logged_with_the_reason_and_without_secret_or_body(setup, caplog):
    client, _, _ = setup()
    with caplog.at_level(logging.DEBUG, logger="conveyor.monitoring.webhook"):
        post(client, payload={"reason": "private-words"}, secret="wrong-secret-wrong-secret")
        post(client, payload={"reason": "private-words", "extra": 1}, ts=NOW + 1)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "rejected 401" in text and "signature does not match" in text
    assert "rejected 400" in text and "extra: unknown field" in text
    assert SECRET not in text and "private-words" not in text


# ---- secret ---------------------------------------------------------------------------------


def test_missing_or_short_secret_is_refused_naming_the_variable(tmp_path, monkeypatch):
    with pytest.raises(WebhookConfigError, match=SECRET_ENV):
        WebhookConfig(secret="too-short")
    with pytest.raises(WebhookConfigError, match=f"{SECRET_ENV} is not set"):
        WebhookConfig.from_env({})
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(WebhookConfigError, match=SECRET_ENV):
        create_app(make_specs(tmp_path), starter=FakeStarter())
    monkeypatch.setenv(SECRET_ENV, "x" * 15)
    with pytest.raises(WebhookConfigError, match=f"{SECRET_ENV} is too short"):
        create_app(make_specs(tmp_path), starter=FakeStarter())
    monkeypatch.setenv(SECRET_ENV, "x" * 16)
    assert create_app(make_specs(tmp_path), starter=FakeStarter()).state.pipelines == ["other", "toy"]


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_webhook_parses():
    args = build_parser().parse_args(["webhook", "a.yaml", "b.yaml", "--port", "9000", "--mode", "event",
                                      "--rate-per-minute", "2", "--burst", "1"])
    assert (args.spec, args.host, args.port, args.mode, args.rate_per_minute, args.burst) == (
        ["a.yaml", "b.yaml"], "127.0.0.1", 9000, "event", 2.0, 1)
    assert args.func.__name__ == "cmd_webhook"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["webhook", "a.yaml", "--mode", "carrier-pigeon"])
    send_args = build_parser().parse_args(["webhook-send", "http://h/hooks/x", "--reason", "r"])
    assert (send_args.url, send_args.reason) == ("http://h/hooks/x", "r")


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """Keep what `conveyor webhook` sets in the environment inside this test; record uvicorn.run."""
    import uvicorn

    from conveyor.orchestration import ephemeral

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append((app, kw)))
    # the temporary Prefect API the command starts (tests/orchestration/test_no_orphans.py runs it for real)
    monkeypatch.setattr(ephemeral, "ensure_api", lambda *a, **k: None)
    return served


def test_cli_webhook_without_secret_exits_with_the_variable_named(tmp_path, monkeypatch, capsys, cli_env):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert main(["webhook", str(write_pipeline_spec(tmp_path, "toy", webhook=True))]) == 1
    assert SECRET_ENV in capsys.readouterr().err
    assert cli_env == []


def test_cli_webhook_serves_the_enabled_pipelines(tmp_path, monkeypatch, caplog, cli_env):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    specs = [str(write_pipeline_spec(tmp_path, "toy", webhook=True)), str(write_pipeline_spec(tmp_path, "quiet", webhook=False))]
    with caplog.at_level(logging.INFO, logger="conveyor.monitoring.webhook"):
        assert main(["webhook", *specs, "--port", "9999", "--rate-per-minute", "2"]) == 0
    ((app, kw),) = cli_env
    assert kw["host"] == "127.0.0.1" and kw["port"] == 9999
    assert app.state.pipelines == ["toy"] and app.state.config.rate_per_minute == 2
    text = caplog.text
    assert "PREFECT_API_URL is not set" in text and "'quiet' is not served" in text


def test_cli_webhook_refuses_when_no_spec_enables_webhooks(tmp_path, monkeypatch, capsys, cli_env):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert main(["webhook", str(write_pipeline_spec(tmp_path, "quiet", webhook=False))]) == 1
    assert "triggers" in capsys.readouterr().err and cli_env == []


def test_cli_webhook_send_signs_and_posts(setup, monkeypatch, capsys):
    client, starter, clock = setup()
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(webhook.time, "time", lambda: clock.t)

    def fake_post(url, content, headers, timeout):
        return client.post(httpx.URL(url).path, content=content, headers=headers)

    monkeypatch.setattr(httpx, "post", fake_post)
    assert main(["webhook-send", "http://127.0.0.1:8787/hooks/toy", "--reason", "label fixes"]) == 0
    out = capsys.readouterr().out
    assert "HTTP 202" in out and "run-1" in out
    assert [c.reason for c in starter.calls] == ["label fixes"]
    assert main(["webhook-send", "http://127.0.0.1:8787/hooks/quiet"]) == 1
    assert "HTTP 404" in capsys.readouterr().out
