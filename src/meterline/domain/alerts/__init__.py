"""Usage alerts: notification rules and when they fire."""
