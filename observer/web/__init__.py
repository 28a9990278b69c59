"""The read-only web page."""
