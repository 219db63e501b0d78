"""The phased converter: preflight, plan, phases, journal, resume/revert."""
