"""Replication: the active side serves its trees and changes, the standby side applies them."""
