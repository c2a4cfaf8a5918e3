"""ssl_dr."""
