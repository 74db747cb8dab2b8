"""The CRM store (SQLite) and, later, the sinks to external CRMs."""
