"""The demo: a RAG support bot whose every step is priced (composition code, like cli)."""
