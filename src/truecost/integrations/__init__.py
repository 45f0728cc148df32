"""What teams already run, priced by truecost: an OTLP receiver for GenAI traces, and callbacks
for LiteLLM, LangChain and LlamaIndex.

Each integration imports its library lazily (inside functions), so importing this package, or
any module in it, loads nothing heavy and needs none of the optional libraries installed.

Every event an integration records says where it came from in ``CostEvent.source`` (a ledger
column): "otlp", "litellm", "langchain" or "llamaindex"; the gateway's say "gateway", the SDK's
"sdk". ``SOURCES`` lists them all (with "unknown", for rows recorded before events had a source).
"""

from truecost.ledger.events import SOURCES

__all__ = ["SOURCES"]
