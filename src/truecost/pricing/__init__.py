"""What does a unit of anything cost, at time t?"""

from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import MAX_TOKENS_PER_CALL, price_quantity, price_tokens
from truecost.pricing.model import LAYERS, PriceEntry, PriceVersion, Tier, Unit, Variant
from truecost.pricing.pricefile import load_price_file
from truecost.pricing.usage import (
    CallUsage,
    MissingUsageError,
    from_anthropic,
    from_google,
    from_openai,
    normalise,
    normalise_call,
)

__all__ = [
    "PriceCatalog",
    "PriceEntry",
    "PriceVersion",
    "Tier",
    "Unit",
    "Variant",
    "LAYERS",
    "load_price_file",
    "price_tokens",
    "price_quantity",
    "MAX_TOKENS_PER_CALL",
    "CallUsage",
    "MissingUsageError",
    "from_openai",
    "from_anthropic",
    "from_google",
    "normalise",
    "normalise_call",
]
