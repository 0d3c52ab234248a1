"""Errors of the audit store."""


class AuditStoreError(RuntimeError):
    """The audit store cannot be opened or read."""


class AuditStoreMissingError(AuditStoreError):
    """No audit store at the expected path (the audit stage has not written one yet)."""
