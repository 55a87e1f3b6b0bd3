"""Monitoring: whylogs profiles, drift and performance triggers, production feedback and the signed webhook receiver."""
