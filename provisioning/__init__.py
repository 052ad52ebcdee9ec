"""Kiosk set-up and model delivery to a fleet."""
