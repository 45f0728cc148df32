"""What does a unit of anything cost, at time t?"""

from truecost.pricing.catalog import PriceCatalog, PriceEntry, PriceVersion, Unit, load_price_file
from truecost.pricing.cost import price_quantity, price_tokens
from truecost.pricing.usage import from_anthropic, from_google, from_openai, normalise

__all__ = [
    "PriceCatalog", "PriceEntry", "PriceVersion", "Unit", "load_price_file",
    "price_tokens", "price_quantity", "from_openai", "from_anthropic", "from_google", "normalise",
]
