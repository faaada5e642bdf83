"""SQLAlchemy adapters shared by SQLite (default) and PostgreSQL."""
