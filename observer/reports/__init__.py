"""The reports: sessions, usage and reconcile, and how they are rendered."""
