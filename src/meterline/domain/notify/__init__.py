"""Outbound notifications: webhook signing and verification (Standard Webhooks)."""
