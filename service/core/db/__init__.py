"""Database access: tables, engine and session handling. Torch-free; shared by the API and the workers."""
