"""Intake parsers: a pydantic request model per format (routes declare them as body types)
and a pure function per format turning a validated body into `AlertIn`s / `StatusChange`s.

Every function takes `received_at` (aware) instead of reading a clock, and raises
`InputError` with a FastAPI-style `loc` (("body", "alerts", 2, "labels", "severity")).
"""
from service.parsers.alertmanager import AlertmanagerAlert, AlertmanagerWebhook, GrafanaWebhook
from service.parsers.alertmanager import to_alerts as alertmanager_to_alerts
from service.parsers.common import StatusChange, alertmanager_fingerprint, normalize_severity, parse_time
from service.parsers.generic import GenericAlert, GenericBody
from service.parsers.generic import to_alerts as generic_to_alerts
from service.parsers.opsgenie import OpsgenieAction, OpsgenieCreate
from service.parsers.opsgenie import status_change as opsgenie_status_change
from service.parsers.opsgenie import to_alerts as opsgenie_to_alerts
from service.parsers.pagerduty import PagerDutyEvent, PagerDutyPayload
from service.parsers.pagerduty import to_alerts as pagerduty_to_alerts

__all__ = [
    "AlertmanagerAlert", "AlertmanagerWebhook", "GrafanaWebhook", "alertmanager_to_alerts",
    "GenericAlert", "GenericBody", "generic_to_alerts",
    "OpsgenieAction", "OpsgenieCreate", "opsgenie_status_change", "opsgenie_to_alerts",
    "PagerDutyEvent", "PagerDutyPayload", "pagerduty_to_alerts",
    "StatusChange", "alertmanager_fingerprint", "normalize_severity", "parse_time",
]
