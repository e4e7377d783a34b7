"""Log alerts through a real Alertmanager (issue 23): a rule fires after `for`, the
receiver gets it through Alertmanager, it resolves when the condition ends, the cooldown
holds a re-fire back, and a tenant's rule never sees another tenant's lines."""

from __future__ import annotations

import time

from conftest import TENANT_A, TENANT_B
from gateway_proc import unique


def state(gateway, token, deployment):
    alerts = gateway.get_json(f"/v1/alerts?deployment={deployment}", token)["alerts"]
    return alerts[0] if alerts else None


def wait_state(gateway, token, deployment, want, timeout=30.0):
    """Polls `GET /v1/alerts` (the gateway's own view) until the alert is in `want`."""
    deadline = time.monotonic() + timeout
    while True:
        a = state(gateway, token, deployment)
        if a and a["state"] == want:
            return a
        assert time.monotonic() < deadline, f"{deployment}: {a}, waited for {want}"
        time.sleep(0.1)


def for_deployment(dep, status=None):
    def pred(body):
        return any(a["labels"].get("deployment") == dep and (status is None or a["status"] == status)
                   for a in body.get("alerts", []))
    return pred


def test_a_rule_fires_after_for_reaches_the_receiver_through_alertmanager_and_resolves(gateway, alertmanager, hook):
    tok = gateway.token(TENANT_A)
    dep = unique("build")
    pushed = time.monotonic()
    gateway.push(tok, dep, [
        {"step": "compile", "message": "compiling"},
        {"step": "test", "level": "error", "message": "thread 'main' panicked at 'boom' ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"},
        {"step": "test", "level": "error", "message": "FATAL: tests aborted"},
    ])
    pending = wait_state(gateway, tok, dep, "pending", timeout=5)
    assert pending["value"] == 2
    firing = wait_state(gateway, tok, dep, "firing")
    assert time.monotonic() - pushed >= 2.0, "fired before `for` (2s) passed"
    assert firing["labels"] == {"alertname": "FatalInBuild", "tenant": TENANT_A, "deployment": dep, "severity": "page"}
    assert firing["annotations"]["summary"] == f"2 fatal lines in {dep}"

    body = hook.wait(for_deployment(dep, "firing"))[0]
    assert body["version"] == "4" and body["status"] == "firing"
    alert = next(a for a in body["alerts"] if a["labels"]["deployment"] == dep)
    assert alert["labels"]["alertname"] == "FatalInBuild"
    assert alert["labels"]["tenant"] == TENANT_A
    first = alert["annotations"]["first"]
    assert first.startswith("thread 'main' panicked at 'boom'")
    assert "A1b2C3d4E5f6G7h8I9j0" not in first, "the line reaches receivers redacted"
    assert alert["generatorURL"].endswith(f"/deployments/{dep}")

    # The 4 s window empties: the gateway sends endsAt, Alertmanager tells the receiver.
    wait_state(gateway, tok, dep, "resolved")
    body = hook.wait(for_deployment(dep, "resolved"))[0]
    assert next(a for a in body["alerts"] if a["labels"]["deployment"] == dep)["endsAt"] != "0001-01-01T00:00:00Z"
    assert not [a for a in alertmanager.alerts() if a["labels"].get("deployment") == dep]


def test_the_cooldown_holds_a_refiring_alert_back(gateway, alertmanager, hook):
    tok = gateway.token(TENANT_A)
    dep = unique("build")
    fatal = [{"message": "FATAL: out of memory"}] * 2
    gateway.push(tok, dep, fatal)
    hook.wait(for_deployment(dep, "firing"))
    wait_state(gateway, tok, dep, "resolved")
    hook.wait(for_deployment(dep, "resolved"))
    # Fires again well within the rule's repeatInterval (1h) of its notification.
    gateway.push(tok, dep, fatal)
    wait_state(gateway, tok, dep, "firing")
    # The engine decided when it fired: nothing was posted, so Alertmanager has no
    # active alert for it and the receiver got one firing only.
    assert not [a for a in alertmanager.alerts() if a["labels"].get("deployment") == dep]
    assert len(hook.matching(for_deployment(dep, "firing"))) == 1


def test_a_tenants_rule_never_sees_another_tenants_lines(gateway, alertmanager, hook):
    tok_a, tok_b = gateway.token(TENANT_A), gateway.token(TENANT_B)
    dep = unique("build")
    # Tenant B's deployment of the same id: only B's rule may count these lines.
    gateway.push(tok_b, dep, [{"message": "FATAL: b only"}] * 2)
    b = wait_state(gateway, tok_b, dep, "firing")
    assert b["labels"]["tenant"] == TENANT_B
    body = hook.wait(for_deployment(dep, "firing"))[0]
    tenants = {a["labels"]["tenant"] for a in body["alerts"] if a["labels"]["deployment"] == dep}
    assert tenants == {TENANT_B}
    # One FATAL line of A's own: below A's count of 2, so A's rule stays quiet (it
    # would fire if B's lines were counted with it).
    gateway.push(tok_a, dep, [{"message": "FATAL: a once"}])
    assert state(gateway, tok_a, dep) is None
    assert all(a["deployment"] != dep for a in gateway.get_json("/v1/alerts", tok_a)["alerts"])
