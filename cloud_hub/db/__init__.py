"""The hub's store: SQLModel tables, engine set-up and CRUD functions."""
