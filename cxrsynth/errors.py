"""Errors that map to the command-line exit codes (0 ok, 1 a check failed, 2 bad input)."""

from __future__ import annotations


class CxrError(Exception):
    """Base class of the project's expected errors; `exit_code` is what the CLI returns."""

    exit_code = 2


class InputError(CxrError):
    """Bad input or configuration. The message names the file, the row or key, and what was expected."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration file or preset that does not validate."""


class CheckFailed(CxrError):
    """A check ran and did not pass (audit refused, verification failed, budget exhausted)."""

    exit_code = 1


class SiteRefused(CheckFailed):
    """A site's refusal whose message holds only settings and ledger figures, never data, so it may
    leave the site as the reason of an error reply (client/egress.py)."""
