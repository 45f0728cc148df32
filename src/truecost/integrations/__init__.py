"""What teams already run, priced by truecost: an OTLP receiver for GenAI traces, and callbacks
for LiteLLM, LangChain and LlamaIndex.

Each integration imports its library lazily (inside functions), so importing this package, or
any module in it, loads nothing heavy and needs none of the optional libraries installed.

Every event an integration records carries ``details["source"]``: one of ``SOURCES``.
"""

SOURCES = ("gateway", "sdk", "otlp", "litellm", "langchain", "llamaindex")

__all__ = ["SOURCES"]
