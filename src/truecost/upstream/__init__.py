"""Talk to model APIs. Every failure surfaces as an UpstreamError subclass."""

from truecost.upstream.errors import (UpstreamBadResponse, UpstreamConnectionError, UpstreamHTTPError,
                                      UpstreamStreamCut, UpstreamTimeout)
from truecost.upstream.openai_compat import OpenAICompatibleUpstream

__all__ = ["OpenAICompatibleUpstream", "UpstreamHTTPError", "UpstreamTimeout", "UpstreamConnectionError",
           "UpstreamBadResponse", "UpstreamStreamCut"]
