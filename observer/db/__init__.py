"""The database: schema, migrations, the daemon's writes and the reports' reads."""
