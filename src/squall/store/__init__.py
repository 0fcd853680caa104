"""The store: the only package that speaks SQL. SQLite (WAL) in the data dir on one machine."""
