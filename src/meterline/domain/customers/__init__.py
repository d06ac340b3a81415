"""Customers: who usage belongs to. A customer owns one or more event subjects."""
