"""Step functions of the chapters: each returns small dataclasses of tables, numbers and readings."""
