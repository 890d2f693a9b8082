"""Alarm 45641: its model, the alarm stores (SQLite, PostgreSQL) and the notifiers with their outbox dispatcher."""

from hasync.alarms.backends import open_store
from hasync.alarms.model import ALARM_ID, SEVERITY, Alarm, Identity, OutboxItem, alarm_name
from hasync.alarms.store import AlarmStore, StoreError
from hasync.masking import mask_url

__all__ = [
    "ALARM_ID",
    "SEVERITY",
    "Alarm",
    "AlarmStore",
    "Identity",
    "OutboxItem",
    "StoreError",
    "alarm_name",
    "mask_url",
    "open_store",
]
