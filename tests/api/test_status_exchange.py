"""GET /api/v1/status's ``exchange`` part from ingest's status file (pure) and its model."""
from __future__ import annotations

from api import status
from api.models import StatusReport


def files(ex) -> dict:
    return {"ingest": {"age_s": 0.5, "data": {"exchange_status": ex}}}


def test_notices_in_force_are_shown_and_bad_entries_skipped():
    ex = {"subscribed": True, "error": None,
          "notices": [{"id": "n1", "title": "Incident", "state": "ongoing", "begin": 1, "end": 2, "maintainType": 3,
                       "serviceTypes": [5], "product": [1], "href": "", "active": True}, {"title": "no id"}, "x"]}
    out = status.exchange_status(files(ex))
    assert out["subscribed"] is True and [n["id"] for n in out["notices"]] == ["n1"]
    report = StatusReport.model_validate({"overall": "ok", "processes": [], "connections": [], "subscriptions": [],
                                          "database": {"reachable": True}, "broker": {"reachable": True},
                                          "exchange": out})
    assert report.model_dump(mode="json")["exchange"]["notices"][0]["active"] is True


def test_no_exchange_part_when_ingest_holds_no_status_socket():
    assert status.exchange_status({}) is None
    assert status.exchange_status({"ingest": {"age_s": 1, "data": {}}}) is None
