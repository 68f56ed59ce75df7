"""Curation: raw documents to a filtered, deduplicated, decontaminated source (jobs/curate.py)."""


class CurateError(ValueError):
    """Bad input or a bad recipe, found before or while curating; the message names the fix."""
