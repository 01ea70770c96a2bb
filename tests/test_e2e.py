"""Both protocols end to end: ``routing-gateway serve`` as a subprocess, spoken to over HTTP."""

from __future__ import annotations

import base64
import uuid

import pytest

pytestmark = pytest.mark.e2e

SEED_REQUEST = {"anum": "+358501231234", "bnum": "+4612312345", "targetid": "SALES_QUEUE"}


def sr(e2e, anum="+358509999999", bnum="+358100000", targetid="QUEUE", **extra):
    return e2e.smartrouting({"anum": anum, "bnum": bnum, "targetid": targetid, **extra})


# --- the seed documents' own examples --------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("+358500000001", {"InitialTarget": "+358123456789"}),
        (
            "+358500000002",
            {
                "InitialTarget": "cd1258fb-0aae-4159-ba9e-41c57c69c398",
                "CustomTTS": "[en-GB] Greetings caller. [fi-FI] Tervehdys soittaja",
            },
        ),
        (
            "+358500000003",
            {"InitialTarget": "DISCONNECT:", "CustomTTS": "This call will be disconnected, sorry about that"},
        ),
        ("+358500000004", {"InitialTarget": "+358123456789", "RequiredTarget": "agent1@customer.com"}),
        (
            "+358500000005",
            {
                "InitialTarget": "+358123456789",
                "AllocationTargets": ["agent1@customer.com", "agent2@customer.com"],
            },
        ),
        ("+358500000006", {"Priority": 10000}),
        ("+358500000007", {"ExtraPriority": 100}),
    ],
)
def test_seed_smartrouting_example_responses(e2e, caller, expected):
    r = sr(e2e, anum=caller)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == expected


def test_seed_smartrouting_request_vip_is_routed(e2e):
    r = e2e.client.post("/smartrouting", json=SEED_REQUEST, headers={"X-Benemen-APIKey": "1234"})
    assert r.status_code == 200
    assert r.json() == {
        "InitialTarget": "vip-queue",
        "FailTarget": "SALES_QUEUE",
        "RequiredTarget": "agent1@customer.com",
        "AllocationTargets": ["agent2@customer.com"],
        "ExtraPriority": 100,
    }


def test_seed_eml_success(e2e):
    r = e2e.eml({"callID": "wtl0tmw3rri9s7gqdpfi0", "rclassification": "GOTOSUPPORT", "callTime": "35"})
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert list(body) == ["rclassification", "number", "callID", "mqID", "success"]
    assert body["rclassification"] == "GOTOSUPPORT"
    assert body["number"] == "5032505555"
    assert body["callID"] == "wtl0tmw3rri9s7gqdpfi0"
    assert body["success"] is True
    assert uuid.UUID(body["mqID"]).version == 7


def test_seed_eml_not_found(e2e):
    r = e2e.eml({"callID": "c-nf", "rclassification": "NOPE", "callTime": "35"})
    assert r.status_code == 201
    assert r.content == b'{"success":false,"message":"NOPE not found"}'


def test_seed_eml_bad_request(e2e):
    r = e2e.eml({"callID": "c1", "rclassification": 7, "callTime": "35"})
    assert r.status_code == 400
    assert (
        r.content
        == b'{"message":["rclassification must be a string"],"error":"Bad Request","statusCode":400}'
    )


# --- SmartRouting scenarios --------------------------------------------------------------------


def test_unknown_caller_gets_default_routing(e2e):
    r = sr(e2e)
    assert r.status_code == 204
    assert r.content == b""


def test_hidden_number_is_unknown_not_an_error(e2e):
    assert e2e.smartrouting({"bnum": "+358100000"}).status_code == 204
    assert e2e.smartrouting({"anum": "", "bnum": ""}).status_code == 204
    assert e2e.smartrouting({}).status_code == 204


def test_numbers_are_normalised_on_both_sides(e2e):
    # The directory has "+358501231234"; the request writes it with 00, spaces and dashes.
    r = sr(e2e, anum="00358 50-123 1234")
    assert r.json()["InitialTarget"] == "vip-queue"


def test_required_agent_left_out_when_attribute_unknown(e2e):
    # The CSV gives this VIP no agent: RequiredTarget is left out, the other keys stay.
    r = sr(e2e, anum="+358501110002")
    assert r.status_code == 200
    body = r.json()
    assert "RequiredTarget" not in body and "AllocationTargets" not in body
    assert body["InitialTarget"] == "vip-queue"


def test_caller_from_directory_file(e2e):
    r = sr(e2e, anum="+46701110001")
    assert r.json() == {
        "InitialTarget": "partner-queue",
        "RequiredTarget": "agent3@customer.com",
        "CustomMSI": "PARTNER,3600",
    }


def test_caller_prefix_rule(e2e):
    assert sr(e2e, anum="+46731234567").json() == {"Priority": 500}


def test_dialed_prefix_and_exact_rules(e2e):
    assert sr(e2e, bnum="+4612312345").json() == {"InitialTarget": "SWE_QUEUE"}
    assert sr(e2e, bnum="+3589123456").json() == {"InitialTarget": "HELPDESK"}


def test_extradata_attribute_rules(e2e):
    vip = "+358501231234"
    internal = sr(e2e, anum=vip, extradata={"IsInternalCaller": True, "CallId": "x"})
    assert internal.status_code == 204  # default = true wins before the VIP rule
    not_internal = sr(e2e, anum=vip, extradata={"IsInternalCaller": False})
    assert not_internal.status_code == 200
    culture = sr(e2e, extradata={"DYN_PAR_Culture": "en-US", "LegId": 12})
    assert culture.json() == {"CustomTTS": "[en-GB] Hello"}
    # A string "true" is not the boolean true.
    assert sr(e2e, extradata={"IsInternalCaller": "true"}).status_code == 204


def test_schedules_open_and_closed(e2e):
    assert sr(e2e, targetid="OPEN_Q").json() == {"InitialTarget": "OPEN_TARGET"}
    assert sr(e2e, targetid="CLOSED_Q").json() == {
        "InitialTarget": "DISCONNECT:",
        "CustomTTS": "[en-GB] We are closed.",
    }
    assert sr(e2e, targetid="NEVER_Q").status_code == 204


def test_empty_targetid_is_none(e2e):
    assert sr(e2e, targetid="").status_code == 204


def test_unknown_fields_are_ignored(e2e):
    assert sr(e2e, anum="+358500000006", somethingNew={"x": [1, 2]}).json() == {"Priority": 10000}


def test_smartrouting_auth(e2e):
    body = {"anum": "+358500000006"}
    assert e2e.client.post("/smartrouting", json=body).status_code == 401
    bad = e2e.client.post("/smartrouting", json=body, headers={"X-Benemen-APIKey": "wrong"})
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == 'Basic realm="smartrouting"'
    assert bad.json() == {"error": "missing or invalid credentials"}
    basic = base64.b64encode(b"enreach:s3cret-pass").decode()
    ok = e2e.client.post("/smartrouting", json=body, headers={"Authorization": f"Basic {basic}"})
    assert ok.json() == {"Priority": 10000}
    wrong = base64.b64encode(b"enreach:nope").decode()
    assert (
        e2e.client.post("/smartrouting", json=body, headers={"Authorization": f"Basic {wrong}"}).status_code
        == 401
    )
    assert (
        e2e.client.post("/smartrouting", json=body, headers={"Authorization": "Basic !!!"}).status_code == 401
    )


# --- EML scenarios -----------------------------------------------------------------------------


def test_round_robin_in_order(e2e):
    numbers = [
        e2e.eml({"callID": f"rr-{i}", "rclassification": "Sales", "callTime": "1"}).json()["number"]
        for i in range(6)
    ]
    start = ["100", "101", "102"].index(numbers[0])
    expected = [["100", "101", "102"][(start + i) % 3] for i in range(6)]
    assert numbers == expected


def test_eml_retry_gets_the_same_answer_and_does_not_advance(e2e):
    first = e2e.eml({"callID": "retry-1", "rclassification": "Sales", "callTime": "5"}).json()
    again = e2e.eml({"callID": "retry-1", "rclassification": "Sales", "callTime": "9"}).json()
    assert again == first
    nxt = e2e.eml({"callID": "retry-2", "rclassification": "Sales", "callTime": "5"}).json()
    order = ["100", "101", "102"]
    assert nxt["number"] == order[(order.index(first["number"]) + 1) % 3]
    # The same call under another classification is a new request.
    moved = e2e.eml({"callID": "retry-1", "rclassification": "GOTOSUPPORT", "callTime": "5"}).json()
    assert moved["number"] == "5032505555" and moved["mqID"] != first["mqID"]


def test_not_found_is_not_remembered(e2e):
    e2e.eml({"callID": "nf-1", "rclassification": "NOPE", "callTime": "1"})
    again = e2e.eml({"callID": "nf-1", "rclassification": "NOPE", "callTime": "1"})
    assert again.json() == {"success": False, "message": "NOPE not found"}


def test_customer_rule(e2e):
    r = e2e.eml({"callID": "cu-1", "rclassification": "Support", "customerID": "ACME", "callTime": "100"})
    assert r.json()["number"] == "400"


def test_call_time_rules(e2e):
    def number(call_time, call_id):
        return e2e.eml({"callID": call_id, "rclassification": "Support", "callTime": call_time}).json()[
            "number"
        ]

    assert number("700", "ct-1") == "300"  # long: tier 2
    assert number("00:10:00", "ct-2") == "300"  # MM:SS form, 600 s
    assert number("5", "ct-3") == "777"  # short
    assert number("100", "ct-4") == "200"  # neither: the classification's own
    assert number("a while", "ct-5") == "200"  # unreadable matches neither bound


def test_eml_disconnect_is_not_available(e2e):
    r = e2e.eml({"callID": "d-1", "rclassification": "Closed", "callTime": "1"})
    assert r.status_code == 201
    assert r.content == b'{"success":false,"message":"Closed not available"}'


def test_eml_rule_without_destination_uses_classification(e2e):
    r = e2e.eml({"callID": "p-1", "rclassification": "GOTOSUPPORT", "callTime": "1"})
    assert r.json()["number"] == "5032505555"


def test_eml_path_variants(e2e):
    body = {"callID": "path-1", "rclassification": "GOTOSUPPORT", "callTime": "1"}
    for path in ("/call/request/", "/CALL/REQUEST", "/call/request?x=1"):
        r = e2e.client.post(path, json=body)
        assert r.status_code == 201, path
        assert r.json()["number"] == "5032505555"


def test_eml_unknown_route(e2e):
    r = e2e.client.post("/call/req", json={})
    assert r.status_code == 404
    assert r.content == b'{"message":"Cannot POST /call/req","error":"Not Found","statusCode":404}'
    r = e2e.client.get("/call/request?a=1")
    assert r.content == b'{"message":"Cannot GET /call/request?a=1","error":"Not Found","statusCode":404}'


def test_health_and_readiness(e2e):
    assert e2e.client.get("/healthz").status_code == 200
    ready = e2e.client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ok" and len(body["config"]["version"]) == 12
    assert body["dependencies"]["store"] == "in-process"


def test_decision_log_masks_numbers(e2e):
    sr(e2e, anum="+358501231234")
    logs = e2e.logs()
    assert "+358501231234" not in logs and "358501231234" not in logs
    assert '"caller":"**********234"' in logs
    assert "s3cret-pass" not in logs
