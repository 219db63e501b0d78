"""Package layering on top of an OSTree base (see issue: layering)."""
