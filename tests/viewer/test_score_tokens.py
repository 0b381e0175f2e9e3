"""The scorer page keeps a revocable device token, never the club password (issue 9, "Also").
Real embedded broker + scorer service + viewer, real Chromium; the sign-in endpoint over HTTP;
mosquitto for the split layout (no password file beside the viewer: no tokens)."""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.tokens import TokenFile, token_digest, tokens_path
from rallycast.cli import main as rallycast
from tests.viewer.conftest import running_stack

pytestmark = pytest.mark.browser

PHONE = {"width": 360, "height": 740, "mobile": True}
CUT_OFF_WITHIN_MS = 5000  # asked: "within a few seconds"
SIGNED_IN = "() => ['start', 'match', 'result'].includes(scorer.dataset.view)"


def tokens_of(stack: Any) -> TokenFile:
    return TokenFile(tokens_path(stack.settings.password_file))


def sign_in(page: Any, password: str) -> None:
    page.fill("#password", password)
    page.click("#signin-form button[type=submit]")


def stored(page: Any) -> dict[str, Any]:
    """Everything the page's origin keeps: localStorage, sessionStorage, cookies."""
    found = page.evaluate(
        "() => ({ local: Object.fromEntries(Object.entries(localStorage)),"
        " session: Object.fromEntries(Object.entries(sessionStorage)) })"
    )
    found["cookies"] = {c["name"]: c["value"] for c in page.context.cookies()}
    return found


def post(stack: Any, path: str, body: Any, **headers: str) -> tuple[int, dict[str, Any], Any]:
    """(status, JSON body or {}, headers) of one request to the viewer."""
    request = urllib.request.Request(
        stack.url(path),
        data=json.dumps(body).encode() if body is not None else None,
        method=headers.pop("method", "POST"),
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read()
            return answer.status, json.loads(text) if text else {}, answer.headers
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, json.loads(text) if text else {}, error.headers


def origin(stack: Any) -> str:
    return stack.viewer.url  # http://127.0.0.1:PORT: what a browser sends for the page


def wait_until(check: Any, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_signing_in_stores_only_a_device_token_and_a_reload_signs_in_with_it(
    stack: Any, open_page: Any
) -> None:
    password = stack.endpoint.users["alpha"]
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    sign_in(phone, password)
    phone.wait_for_function(SIGNED_IN)
    kept = stored(phone)
    everything = json.dumps(kept)
    assert password not in everything, kept
    token = kept["local"]["rallycast.token.alpha"]
    assert token.startswith("rct_") and list(kept["local"]) == ["rallycast.token.alpha"]
    assert kept["session"] == {} and kept["cookies"] == {}
    assert phone.input_value("#password") == ""  # not left in the form either
    # The viewer stored only the token's hash, 0600, with a device label.
    path = tokens_path(stack.settings.password_file)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token not in path.read_text()
    [record] = tokens_of(stack).read()
    assert (record.user, record.sha256) == ("alpha", token_digest(token))
    assert record.device.startswith("Chrom")

    phone.reload()  # no password typed: the token signs in
    phone.wait_for_function(SIGNED_IN)
    assert phone.locator("#signin-form").is_hidden()
    assert password not in json.dumps(stored(phone))


def test_an_old_stored_password_is_deleted_at_once(stack: Any, open_page: Any) -> None:
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    phone.evaluate("(pw) => localStorage.setItem('rallycast.password.alpha', pw)",
                   stack.endpoint.users["alpha"])  # fmt: skip
    phone.reload()
    phone.wait_for_selector("#signin-form", state="visible")
    assert stored(phone)["local"] == {}
    assert phone.evaluate("() => scorer.dataset.view") == "signin"  # not used to sign in


def test_revoking_the_token_cuts_the_page_off_within_seconds_and_it_asks_again(
    stack: Any, open_page: Any
) -> None:
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    phone.failures.allowed.append("WebSocket")  # the broker drops the connection
    sign_in(phone, stack.endpoint.users["alpha"])
    phone.wait_for_function(SIGNED_IN)
    phone.wait_for_function("() => Rallycast.client && Rallycast.client.connected")
    [record] = tokens_of(stack).read()
    revoked_at = phone.evaluate("() => performance.now()")
    data_dir = str(stack.settings.data_dir)
    assert rallycast(["passwd", "--data-dir", data_dir,
                      "tokens", "revoke", "alpha", record.id]) == 0  # fmt: skip
    phone.wait_for_selector("#signin-form", state="visible", timeout=CUT_OFF_WITHIN_MS + 3000)
    asked_at = phone.evaluate("() => performance.now()")
    print(f"page asked for the password {asked_at - revoked_at:.0f} ms after the revoke")
    assert asked_at - revoked_at < CUT_OFF_WITHIN_MS
    assert phone.inner_text("#signin-message").startswith("This phone is signed out")
    assert stored(phone)["local"] == {}
    # The password again: a new token, and the page works.
    sign_in(phone, stack.endpoint.users["alpha"])
    phone.wait_for_function(SIGNED_IN)
    assert len(tokens_of(stack).read()) == 1


def test_sign_out_deletes_the_token_on_the_server_and_on_the_phone(
    stack: Any, open_page: Any
) -> None:
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    sign_in(phone, stack.endpoint.users["alpha"])
    phone.wait_for_function(SIGNED_IN)
    token = stored(phone)["local"]["rallycast.token.alpha"]
    assert stack.endpoint.connack("alpha", token) == 0
    phone.click("#sign-out")
    phone.wait_for_selector("#signin-form", state="visible")
    assert stored(phone)["local"] == {}
    wait_until(lambda: tokens_of(stack).read() == [], what="the token removed on the server")
    assert stack.endpoint.connack("alpha", token) == 5
    phone.reload()
    phone.wait_for_selector("#signin-form", state="visible")


def test_a_wrong_password_is_refused_and_then_throttled(stack: Any) -> None:
    headers = {"Origin": origin(stack)}
    statuses = []
    for _ in range(8):  # LoginThrottle: a burst of 5, then login_attempts_per_minute
        status, body, answer = post(stack, "/clubs/alpha/session", {"password": "wrong"}, **headers)
        statuses.append(status)
        if status == 429:
            assert body["code"] == "too_many_attempts" and answer["Retry-After"] == "60"
            break
        assert (status, body["code"]) == (401, "wrong_password")
    assert statuses[-1] == 429 and 401 in statuses, statuses
    # Throttled per address: the right password from here waits too; nothing was issued.
    good = {"password": stack.endpoint.users["alpha"]}
    assert post(stack, "/clubs/alpha/session", good, **headers)[0] == 429
    assert tokens_of(stack).read() == []


def test_the_session_endpoint_is_same_origin_only(stack: Any) -> None:
    good = {"password": stack.endpoint.users["alpha"]}
    for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"}):
        status, body, _ = post(stack, "/clubs/alpha/session", good, **headers)
        assert (status, body["code"]) == (403, "cross_origin"), headers
    assert tokens_of(stack).read() == []
    status, body, _ = post(stack, "/clubs/alpha/session", good, Origin=origin(stack))
    assert status == 201 and body["token"].startswith("rct_")
    bearer = {"Authorization": "Bearer " + body["token"], "method": "DELETE"}
    status, _, _ = post(stack, "/clubs/alpha/session", None, Origin="http://evil.example", **bearer)
    assert status == 403 and len(tokens_of(stack).read()) == 1  # no sign-out from elsewhere
    assert post(stack, "/clubs/alpha/session", None, Origin=origin(stack), **bearer)[0] == 204
    assert tokens_of(stack).read() == []


def test_club_a_password_gets_no_token_for_club_b_and_a_token_stays_in_its_club(
    stack: Any,
) -> None:
    headers = {"Origin": origin(stack)}
    alpha = {"password": stack.endpoint.users["alpha"]}
    assert post(stack, "/clubs/beta/session", alpha, **headers)[0] == 401
    assert post(stack, "/clubs/nowhere/session", alpha, **headers)[1]["code"] == "no_club"
    status, body, _ = post(stack, "/clubs/alpha/session", alpha, **headers)
    assert status == 201
    assert stack.endpoint.connack("beta", body["token"]) == 5
    assert stack.endpoint.connack("alpha", body["token"]) == 0
    # Sign-out of club B with club A's token removes nothing.
    bearer = {"Authorization": "Bearer " + body["token"], "method": "DELETE"}
    assert post(stack, "/clubs/beta/session", None, **headers, **bearer)[0] == 204
    assert len(tokens_of(stack).read()) == 1


@pytest.fixture
def split_stack(mosquitto_broker: Any, tmp_path: Path) -> Iterator[Any]:
    """The viewer beside mosquitto, with no password file of its own: no tokens."""
    with running_stack(mosquitto_broker, tmp_path / "app") as running:
        yield running


def test_without_tokens_the_page_keeps_the_password_in_memory_only(
    split_stack: Any, open_page: Any
) -> None:
    stack = split_stack
    password = stack.endpoint.users["alpha"]
    headers = {"Origin": origin(stack)}
    status, body, _ = post(stack, "/clubs/alpha/session", {"password": password}, **headers)
    assert (status, body["code"]) == (404, "tokens_off")
    phone = open_page(stack.url("/clubs/alpha/score"), **PHONE)
    sign_in(phone, password)
    phone.wait_for_function(SIGNED_IN)
    assert password not in json.dumps(stored(phone))
    phone.reload()  # a reload asks again
    phone.wait_for_selector("#signin-form", state="visible")
    assert phone.evaluate("() => scorer.dataset.view") == "signin"
