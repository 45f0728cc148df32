"""The OpenAI-compatible HTTP face: thin routes over one pipeline function."""
